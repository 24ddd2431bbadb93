//go:build unix && !linux

package main

import "syscall"

// dieWithParent does nothing where redlock sets no parent-death signal: if
// redlock is killed with SIGKILL there, COMMAND runs on.
func dieWithParent(*syscall.SysProcAttr) {}
