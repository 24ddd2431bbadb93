//go:build unix

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
	// Named so, since failure is the command's own function.
	failurekind "github.com/seed62cefe0a/redlock/internal/failure"
)

const runUsage = `Usage:
  redlock run [-url URL]... [-ttl 8s] [-wait D] [-grace D] [-fencing | -n N] NAME -- COMMAND [ARG]...

Run waits for the lock NAME, forever unless -wait bounds the wait, then runs
COMMAND in its own process group with REDLOCK_NAME set to NAME (and, with
-fencing, REDLOCK_TOKEN to the fencing token). Stdin, stdout and stderr pass
through. The lock is extended while COMMAND runs and released when it exits,
after anything COMMAND left running in its process group is killed.

With -n N, NAME is a semaphore of N permits instead, and run waits for one
of them: up to N commands run at once, across every machine. Every user of
NAME must give the same N. A permit is extended, lost and released as the
lock is, and -fencing does not apply to it.

If the lock is lost (too few masters confirm it before its validity ends),
COMMAND's process group is killed at once with SIGKILL, or with -grace D,
sent SIGTERM and killed D later, which lets COMMAND run past the lock's
validity by up to D. redlock then exits 76. SIGINT, SIGTERM and SIGHUP sent
to redlock are passed on to COMMAND's process group; the lock is released
once COMMAND has exited. In the foreground of a terminal, COMMAND's group
has the terminal while it runs, with Ctrl-Z (SIGTSTP) ignored. On Linux,
COMMAND is killed if redlock itself is killed (SIGKILL, the OOM killer), but
the processes COMMAND started in its group are not.

Exit status: COMMAND's own, or 128+N if signal N killed it (or, sent to
redlock, ended the wait for the lock); 75 if the lock was not acquired within
-wait; 76 if the lock was lost; 64 for a usage error; 70 for any other
failure, such as a bad URL or a COMMAND that cannot be started.

Examples:
  # cron: run the report on one machine at a time, skip the turn if it is taken
  */5 * * * * redlock run -wait 0 nightly-report -- /usr/local/bin/report

  # at most 4 encoders at once, on any number of machines
  redlock run -n 4 encoders -- ffmpeg -i in.mov out.mp4

  # three masters; wait up to a minute; the migration gets a fencing token
  export REDLOCK_URLS=redis://a:6379/0,redis://b:6379/0,redis://c:6379/0
  redlock run -wait 1m -fencing migrations -- sh -c './migrate --token "$REDLOCK_TOKEN"'
`

// runFlags are the flags of run.
type runFlags struct {
	urls    urlFlag
	ttl     time.Duration
	wait    waitFlag
	grace   time.Duration
	fencing bool
	permits permitsFlag
}

// waitFlag is -wait, which is either unset (wait until the lock is free) or
// a duration that bounds the wait, where 0 means a single attempt.
type waitFlag struct {
	d   time.Duration
	set bool
}

func (w *waitFlag) String() string {
	if !w.set {
		return ""
	}
	return w.d.String()
}

func (w *waitFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("parse error")
	}
	if d < 0 {
		return errors.New("must not be negative")
	}
	w.d, w.set = d, true
	return nil
}

// check checks the flags that run and elect share.
func (f *runFlags) check() error {
	switch {
	case f.ttl <= 0 || f.ttl%time.Millisecond != 0:
		return fmt.Errorf("-ttl %v is not a positive whole number of milliseconds", f.ttl)
	case f.grace < 0:
		return fmt.Errorf("-grace %v is negative", f.grace)
	}
	return nil
}

// unlockTimeout bounds the release after COMMAND has exited. Unlock itself
// waits no longer than the node timeout (at most 500ms) for each master.
const unlockTimeout = 5 * time.Second

func runCommand(args, env []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("redlock run", flag.ContinueOnError)
	var f runFlags
	fs.Var(&f.urls, "url", "a Redis master's `URL`; repeat it for each master (default: $REDLOCK_URLS, comma-separated, or redis://127.0.0.1:6379/0)")
	fs.DurationVar(&f.ttl, "ttl", defaultTTL, "the lock's time to live: how long the masters keep it if redlock dies without releasing it")
	fs.Var(&f.wait, "wait", "give up after waiting `D` for the lock, and exit 75; 0 makes one attempt (default: wait until the lock is free)")
	fs.DurationVar(&f.grace, "grace", 0, "on loss of the lock, send SIGTERM and wait `D` before SIGKILL (default: SIGKILL at once)")
	fs.BoolVar(&f.fencing, "fencing", false, "set REDLOCK_TOKEN to a fencing token, larger than any earlier holder's")
	fs.Var(&f.permits, "n", "hold one of `N` permits of the semaphore NAME, so that up to N commands run at once (default: a lock, one at a time)")

	name, command, exit, ok := parseNamed(fs, args, runUsage, true, stdout, stderr)
	if !ok {
		return exit
	}
	switch err := f.check(); {
	case err != nil:
		return usageError(stderr, "run", err)
	case f.fencing && f.permits.set:
		return usageError(stderr, "run", errors.New("-fencing does not apply to a semaphore (-n)"))
	}
	flagOpts := f.options()
	if err := checkOptions(flagOpts); err != nil {
		return usageError(stderr, "run", err)
	}
	diagnostics := newDiagnostics(stderr, upAfter(f.ttl))
	redis.SetLogger(diagnostics)
	opts := []redlock.Option{redlock.WithLogger(diagnostics.logger())}
	for _, o := range flagOpts {
		opts = append(opts, o.option)
	}
	newLock := func(c *redlock.Client) lock { return newLock(c, name, f) }
	return runLocked(name, newLock, command, f, opts, env, stdin, stdout, stderr)
}

// options returns the library's options that the flags f set.
func (f *runFlags) options() []flagOption {
	opts := []flagOption{{"-ttl " + f.ttl.String(), redlock.WithTTL(f.ttl)}}
	if f.fencing {
		opts = append(opts, flagOption{"-fencing", redlock.WithFencing()})
	}
	if f.wait.d > 0 {
		opts = append(opts, flagOption{"-wait " + f.wait.d.String(), redlock.WithWaitTimeout(f.wait.d)})
	}
	return opts
}

// runLocked runs command under the lock name, which newLock makes, as the
// flags f and the library's options opts say, and returns the exit status.
func runLocked(name string, newLock func(*redlock.Client) lock, command []string, f runFlags, opts []redlock.Option, env []string, stdin io.Reader, stdout, stderr io.Writer) int {
	client, err := redlock.Dial(masters(f.urls, env), opts...)
	if err != nil {
		return failure(stderr, err)
	}
	code, unlocked := underLock(newLock(client), name, command, f, env, stdin, stdout, stderr)
	if unlocked {
		// Close waits for the releases still in flight to slow masters.
		client.Close()
		return code
	}
	// The lock was lost, or never acquired. The library releases its key
	// on every master that may have it, the masters that answer within a
	// round trip or two; give them releaseWait to take it. Close would go
	// on to wait for the others a node timeout for each of its steps,
	// though they are often why the lock was lost or not acquired, and
	// their keys expire with the TTL anyway.
	closeWithin(client, releaseWait)
	return code
}

// releaseWait bounds the wait for the library's own release, after a loss
// or an acquisition that failed: enough for masters that answer, even
// slowly, to take it; short enough that whoever watches redlock sees the
// outcome at once.
const releaseWait = 250 * time.Millisecond

// closeWithin closes client, or gives up after d and leaves Close running
// in the background of a process about to exit.
func closeWithin(client *redlock.Client, d time.Duration) {
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		client.Close()
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-closed:
	case <-timer.C:
	}
}

// underLock acquires l, the lock name, runs command while it holds it,
// releases it and returns the exit status, and whether it released the
// lock: not when the lock was lost or never acquired.
func underLock(l lock, name string, command []string, f runFlags, env []string, stdin io.Reader, stdout, stderr io.Writer) (code int, unlocked bool) {
	// From here on, SIGINT, SIGTERM and SIGHUP end the wait for the lock,
	// or are passed on to COMMAND.
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)

	held, stop, caught, err := acquire(l, f.wait, signals)
	defer stop()
	if err != nil {
		if caught != nil {
			// Interrupted: exit as if the signal had killed redlock.
			return 128 + int(caught.(syscall.Signal)), false
		}
		return notAcquired(stderr, l.label(), err), false
	}
	if caught != nil {
		release(l, stderr)
		return 128 + int(caught.(syscall.Signal)), true
	}

	j, err := startJob(held, l.label(), command, childEnv(env, name, l.vars()), stdin, stdout, stderr)
	var notStarted *notStartedError
	if errors.As(err, &notStarted) {
		// Lost before COMMAND started; the library releases the key.
		fmt.Fprintf(stderr, "redlock: %s: %s\n", l.label(), oneLine(err))
		return exitLost, false
	}
	if err != nil {
		release(l, stderr)
		return failure(stderr, err), true
	}
	lost := j.supervise(held, signals, f.grace)
	j.finish()
	if lost {
		// The library released the key on every master when it declared
		// the loss; Unlock would only report the loss again.
		return exitLost, false
	}
	release(l, stderr)
	return j.status(), true
}

// splitCommand splits run's arguments at the first "--" into redlock's and
// COMMAND's, and reports whether there was one.
func splitCommand(args []string) (own, command []string, dashes bool) {
	i := slices.Index(args, "--")
	if i < 0 {
		return args, nil, false
	}
	return args[:i], args[i+1:], true
}

// acquire takes the lock as -wait says: one attempt for -wait 0, a wait
// bounded by WithWaitTimeout for a positive -wait, an unbounded wait
// otherwise. A signal ends the wait and is returned as caught; if it came as
// the lock was acquired, the lock is held and must be released. held derives
// from a context that only a signal during the wait cancels; the caller calls
// stop once it has released the lock.
func acquire(l lock, wait waitFlag, signals <-chan os.Signal) (held context.Context, stop context.CancelFunc, caught os.Signal, err error) {
	ctx, stop := context.WithCancel(context.Background())
	type result struct {
		held context.Context
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.held, r.err = l.acquire(ctx, wait.set && wait.d == 0)
		done <- r
	}()
	for {
		select {
		case caught = <-signals:
			stop()
		case r := <-done:
			return r.held, stop, caught, r.err
		}
	}
}

// notAcquired reports a lock, named by label, that was not acquired:
// exitNotAcquired when it was taken, too few masters answered, a master
// answered an error that may pass (OOM, LOADING, BUSY), or the wait ran
// out; exitFailure when a master answered an error that retrying cannot fix
// (an ACL denial, a rejected script, a semaphore's limit that another user
// gave otherwise), or the error is not about acquisition at all.
func notAcquired(stderr io.Writer, label string, err error) int {
	if !errors.Is(err, redlock.ErrNotAcquired) || errors.Is(err, redlock.ErrPermitsMismatch) || permanent(err) {
		return failure(stderr, fmt.Errorf("%s: %s", label, oneLine(err)))
	}
	fmt.Fprintf(stderr, "redlock: %s: %s\n", label, oneLine(err))
	return exitNotAcquired
}

// permanent reports whether any error in err's tree is one that retrying
// cannot fix. failurekind.Permanent looks at the first error reply it finds,
// and a round's joined errors may hold a transient one (one master's OOM)
// before a permanent one (another's NOPERM).
func permanent(err error) bool {
	switch e := err.(type) {
	case nil:
		return false
	case redis.Error:
		return failurekind.Permanent(e)
	case interface{ Unwrap() []error }:
		return slices.ContainsFunc(e.Unwrap(), permanent)
	case interface{ Unwrap() error }:
		return permanent(e.Unwrap())
	}
	return failurekind.Permanent(err)
}

// release gives l back after COMMAND has run, and reports what went wrong
// without changing the exit status: COMMAND ran under the lock, and a key
// that was not deleted expires with its TTL.
func release(l lock, stderr io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), unlockTimeout)
	defer cancel()
	if err := l.release(ctx); err != nil {
		fmt.Fprintf(stderr, "redlock: release of %s incomplete: %s\n", l.label(), trimPrefix(err))
	}
}

// childEnv is COMMAND's environment: env with REDLOCK_NAME set, and vars,
// the lock's own variables. An inherited REDLOCK_TOKEN or REDLOCK_TERM is
// removed, so that COMMAND never mistakes an outer lock's for its own.
func childEnv(env []string, name string, vars []string) []string {
	out := make([]string, 0, len(env)+1+len(vars))
	for _, kv := range env {
		switch key, _, _ := strings.Cut(kv, "="); key {
		case "REDLOCK_NAME", "REDLOCK_TOKEN", "REDLOCK_TERM":
		default:
			out = append(out, kv)
		}
	}
	out = append(out, "REDLOCK_NAME="+name)
	return append(out, vars...)
}
