//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// openTerminal opens a pseudo-terminal and returns its two sides.
func openTerminal(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	raw, err := ptm.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var number uint32
	var ioctlErr error
	raw.Control(func(fd uintptr) {
		var unlock int32
		if ioctlErr = ioctl(int(fd), syscall.TIOCSPTLCK, unsafe.Pointer(&unlock)); ioctlErr == nil {
			ioctlErr = ioctl(int(fd), syscall.TIOCGPTN, unsafe.Pointer(&number))
		}
	})
	if ioctlErr != nil {
		ptm.Close()
		t.Fatalf("unlocking the pseudo-terminal: %v", ioctlErr)
	}
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", number), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		ptm.Close()
		t.Fatal(err)
	}
	return ptm, pts
}

// Run from an interactive shell, redlock is in the foreground of its
// terminal, and COMMAND, in a group of its own, takes its place there: it
// can read from the terminal instead of being stopped by SIGTTIN. Ctrl-Z
// does not suspend it.
func TestRunCommandReadsTerminal(t *testing.T) {
	masters := startMasters(t, 3)
	ptm, pts := openTerminal(t)
	defer ptm.Close()

	cmd := exec.Command(binary, "run", "terminal", "--", "sh", "-c", `echo ready; read line; echo "got $line"; exit 3`)
	cmd.Env = append(os.Environ(), urlsEnv(masters), "GORACE=atexit_sleep_ms=0")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	// A session of its own, with the terminal as its controlling one: as a
	// shell would run it, in the foreground.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close()
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()

	var mu sync.Mutex
	var output bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 1024)
		for {
			n, err := ptm.Read(buf)
			mu.Lock()
			output.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return // EIO once nothing has the terminal open
			}
		}
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		ready := strings.Contains(output.String(), "ready")
		mu.Unlock()
		if ready || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Ctrl-Z, then a line.
	if _, err := ptm.Write([]byte("\x1ahello\n")); err != nil {
		t.Fatal(err)
	}

	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		// Without the terminal, COMMAND stopped on its read. Once redlock
		// is killed, its stopped group is orphaned, and the kernel sends
		// it SIGHUP and SIGCONT, which end it.
		cmd.Process.Kill()
		<-exited
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("redlock did not exit within 15s of the line typed; terminal:\n%s", output.String())
	}
	ptm.Close() // ends the reader, should some process still have the terminal
	<-read
	mu.Lock()
	defer mu.Unlock()
	if code := cmd.ProcessState.ExitCode(); code != 3 {
		t.Errorf("redlock exited %d; want COMMAND's 3\nterminal:\n%s", code, output.String())
	}
	if !strings.Contains(output.String(), "got hello") {
		t.Errorf("COMMAND did not read the line typed; terminal:\n%s", output.String())
	}
	if n := keyHolders(t, masters, "terminal"); n != 0 {
		t.Errorf("the key is on %d masters after redlock exited; want 0", n)
	}
}
