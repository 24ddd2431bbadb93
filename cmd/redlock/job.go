//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"time"
)

// job is COMMAND, running in its own process group, whose id is its pid.
type job struct {
	name   string // the lock's label, for diagnostics
	cmd    *exec.Cmd
	stderr io.Writer
	done   chan struct{} // closed once cmd.Wait has returned
	err    error         // cmd.Wait's error, set before done is closed
	// terminal is redlock's terminal, which COMMAND's group has in the
	// foreground while it runs, if foreground is set.
	terminal   int
	foreground bool
}

// startJob starts command, under the lock that label names, in a new
// process group with env, unless held has ended: then it returns a
// *notStartedError. If redlock is in the foreground of the terminal on
// stdin, the new group takes its place there until it exits, so that
// COMMAND can read from the terminal and gets its Ctrl-C directly. Where the system has a parent-death signal, COMMAND gets
// SIGKILL if redlock dies, even of SIGKILL.
func startJob(held context.Context, label string, command, env []string, stdin io.Reader, stdout, stderr io.Writer) (*job, error) {
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	// Its own group, so that a loss kills whatever COMMAND started too.
	terminal, foreground := foregroundTerminal(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Foreground: foreground, Ctty: terminal}
	dieWithParent(cmd.SysProcAttr)
	if foreground {
		// Ctrl-Z would stop COMMAND while redlock kept the lock, and the
		// terminal, from everyone: COMMAND inherits SIGTSTP ignored.
		signal.Ignore(syscall.SIGTSTP)
		defer signal.Reset(syscall.SIGTSTP)
	}
	// When stdout or stderr is not a file, Wait copies it from a pipe that
	// a leftover process can keep open; this bounds that wait.
	cmd.WaitDelay = time.Second
	j := &job{name: label, cmd: cmd, stderr: stderr, done: make(chan struct{}), terminal: terminal, foreground: foreground}
	started := make(chan error)
	go j.run(held, started)
	if err := <-started; err != nil {
		return nil, err
	}
	if foreground {
		inBackground()
	}
	return j, nil
}

// run starts COMMAND, sends the outcome on started, and if it started,
// waits for it and closes j.done. The kernel sends the parent-death signal
// when the thread that forked the child exits, not the process, and Go ends
// a thread when a goroutine locked to it returns; so the goroutine that
// starts COMMAND is locked to its thread until COMMAND has been reaped, and
// no other goroutine can end that thread meanwhile.
func (j *job) run(held context.Context, started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// The lock may have been lost since it was acquired. Once COMMAND has
	// started, supervise sees a loss and kills it; before, this is the last
	// moment to tell.
	if held.Err() != nil {
		started <- &notStartedError{cause: context.Cause(held)}
		return
	}
	if err := j.cmd.Start(); err != nil {
		started <- fmt.Errorf("cannot start COMMAND: %w", err)
		return
	}
	started <- nil
	j.err = j.cmd.Wait()
	close(j.done)
}

// notStartedError is startJob's error when the held context had ended, the
// lock lost, before COMMAND could start.
type notStartedError struct{ cause error }

func (e *notStartedError) Error() string { return e.cause.Error() + "; COMMAND not started" }
func (e *notStartedError) Unwrap() error { return e.cause }

// signal sends sig to the job's process group. A group that is already
// gone is not an error.
func (j *job) signal(sig syscall.Signal) {
	if err := syscall.Kill(-j.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		fmt.Fprintf(j.stderr, "redlock: sending %v to COMMAND's process group: %v\n", sig, err)
	}
}

// supervise waits for COMMAND to exit. Meanwhile it passes the signals on to
// COMMAND's process group, and if held ends, which happens only when the lock
// is lost, it kills the group: at once, or with a grace period after SIGTERM.
// It reports whether the lock was lost before COMMAND's exit was seen.
func (j *job) supervise(held context.Context, signals <-chan os.Signal, grace time.Duration) (lost bool) {
	heldDone := held.Done()
	var kill <-chan time.Time
	for {
		select {
		case <-j.done:
			// A loss at the moment COMMAND exits counts as a loss: which
			// came first cannot be told.
			return lost || held.Err() != nil
		case sig := <-signals:
			j.signal(sig.(syscall.Signal))
		case <-heldDone:
			heldDone, lost = nil, true
			cause := trimPrefix(context.Cause(held))
			if grace == 0 {
				j.signal(syscall.SIGKILL)
				fmt.Fprintf(j.stderr, "redlock: %s: %s; killed COMMAND's process group\n", j.name, cause)
				continue
			}
			j.signal(syscall.SIGTERM)
			fmt.Fprintf(j.stderr, "redlock: %s: %s; sent SIGTERM to COMMAND's process group, SIGKILL follows in %v\n", j.name, cause, grace)
			timer := time.NewTimer(grace)
			defer timer.Stop()
			kill = timer.C
		case <-kill:
			kill = nil
			j.signal(syscall.SIGKILL)
			fmt.Fprintf(j.stderr, "redlock: killed COMMAND's process group after the grace period of %v\n", grace)
		}
	}
}

// finish follows COMMAND's exit: it takes the terminal back, if COMMAND had
// it, and kills what COMMAND left running in its process group, such as a
// background job, so that nothing it started runs on once the lock is
// released. The group's id cannot name another group yet: it is not reused
// while a member lives, and the pid was reaped only just now.
func (j *job) finish() {
	if j.foreground {
		if err := takeForeground(j.terminal); err != nil {
			fmt.Fprintf(j.stderr, "redlock: taking the terminal back from COMMAND: %v\n", err)
		}
	}
	j.signal(syscall.SIGKILL)
}

// status is COMMAND's exit status, or 128+N if signal N killed it.
func (j *job) status() int {
	state := j.cmd.ProcessState
	if state == nil {
		fmt.Fprintf(j.stderr, "redlock: waiting for COMMAND: %v\n", j.err)
		return exitFailure
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if code := state.ExitCode(); code >= 0 {
		return code
	}
	return exitFailure
}
