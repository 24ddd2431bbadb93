//go:build linux || darwin || freebsd

package main

import (
	"io"
	"os"
	"os/signal"
	"syscall"
	"unsafe"
)

// foregroundTerminal returns the file descriptor of stdin if it is a
// terminal whose foreground process group is redlock's, as when redlock runs
// from an interactive shell. COMMAND, in a group of its own, could not read
// from that terminal (SIGTTIN would stop it) unless its group is made the
// foreground one.
func foregroundTerminal(stdin io.Reader) (fd int, ok bool) {
	f, isFile := stdin.(*os.File)
	if !isFile {
		return 0, false
	}
	fd = int(f.Fd())
	var pgrp int32
	if err := ioctl(fd, syscall.TIOCGPGRP, unsafe.Pointer(&pgrp)); err != nil {
		return 0, false // not a terminal
	}
	return fd, int(pgrp) == syscall.Getpgrp()
}

// inBackground prepares redlock to be in the background of its terminal
// while COMMAND's group is in the foreground: it ignores SIGTTOU, so that
// writing its diagnostics there (with stty tostop), or taking the foreground
// back, does not stop it.
func inBackground() {
	signal.Ignore(syscall.SIGTTOU)
}

// takeForeground makes redlock's process group the foreground one of the
// terminal fd again, once COMMAND has exited.
func takeForeground(fd int) error {
	pgrp := int32(syscall.Getpgrp())
	return ioctl(fd, syscall.TIOCSPGRP, unsafe.Pointer(&pgrp))
}

func ioctl(fd int, request uintptr, arg unsafe.Pointer) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), request, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}
