package main

import "syscall"

// dieWithParent makes the kernel send COMMAND SIGKILL when redlock dies,
// however it dies, so that COMMAND cannot run on once the lock expires. Only
// COMMAND itself gets it: what COMMAND starts in its group does not, and the
// kernel clears it when COMMAND executes a set-user-ID or set-group-ID
// program.
func dieWithParent(attr *syscall.SysProcAttr) {
	attr.Pdeathsig = syscall.SIGKILL
}
