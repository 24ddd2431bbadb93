//go:build unix

package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"strconv"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

const electUsage = `Usage:
  redlock elect [-url URL]... [-ttl 8s] [-wait D] [-grace D] [-value V] NAME -- COMMAND [ARG]...

Elect campaigns in the election NAME, waiting behind the candidates that
came first, then runs COMMAND while it leads, as run does under a lock:
COMMAND gets its own process group, REDLOCK_NAME set to NAME and
REDLOCK_TERM to the term's number, which is larger than every earlier
term's, so that a resource that remembers the largest it has seen turns a
deposed leader away. The term is extended while COMMAND runs, and resigned
when it exits, which makes the next candidate lead at once. V, the leader's
value that 'redlock leader' prints, is hostname:pid by default.

If the term is lost (too few masters confirm it before its validity ends),
COMMAND's process group is killed at once with SIGKILL, or with -grace D,
sent SIGTERM and killed D later; redlock then exits 76. Signals are passed
on to COMMAND as run passes them.

Exit status: COMMAND's own, or 128+N if signal N killed it (or, sent to
redlock, ended the campaign); 75 if redlock did not lead within -wait; 76
if the term was lost; 64 for a usage error; 70 for any other failure.

Examples:
  # one scheduler at a time; another machine takes over when this one dies
  redlock elect scheduler -- ./scheduler --term "$REDLOCK_TERM"

  # give up after a minute, and say who leads instead
  redlock elect -wait 1m -value "$(hostname)" reindex -- ./reindex || redlock leader reindex
`

func electCommand(args, env []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("redlock elect", flag.ContinueOnError)
	var f runFlags
	fs.Var(&f.urls, "url", "a Redis master's `URL`; repeat it for each master (default: $REDLOCK_URLS, comma-separated, or redis://127.0.0.1:6379/0)")
	fs.DurationVar(&f.ttl, "ttl", defaultTTL, "the term's time to live: how long the masters keep it if redlock dies without resigning")
	fs.Var(&f.wait, "wait", "give up after campaigning for `D`, and exit 75 (default: campaign until elected)")
	fs.DurationVar(&f.grace, "grace", 0, "on loss of the term, send SIGTERM and wait `D` before SIGKILL (default: SIGKILL at once)")
	value := fs.String("value", "", "the leader's `V`alue while this process leads (default: hostname:pid)")

	name, command, exit, ok := parseNamed(fs, args, electUsage, true, stdout, stderr)
	if !ok {
		return exit
	}
	switch err := f.check(); {
	case err != nil:
		return usageError(stderr, "elect", err)
	case f.wait.set && f.wait.d == 0:
		return usageError(stderr, "elect", errors.New("-wait 0: a campaign has no single attempt; give a positive -wait"))
	}
	flagOpts := f.options()
	if err := checkOptions(flagOpts); err != nil {
		return usageError(stderr, "elect", err)
	}
	v := *value
	if !isFlagSet(fs, "value") {
		v = defaultValue()
	}
	diagnostics := newDiagnostics(stderr, upAfter(f.ttl))
	redis.SetLogger(diagnostics)
	opts := []redlock.Option{redlock.WithLogger(diagnostics.logger())}
	for _, o := range flagOpts {
		opts = append(opts, o.option)
	}
	newTerm := func(c *redlock.Client) lock { return &termLock{e: c.NewElection(name), value: v} }
	return runLocked(name, newTerm, command, f, opts, env, stdin, stdout, stderr)
}

// defaultValue is a leader's value without -value: hostname:pid.
func defaultValue() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return host + ":" + strconv.Itoa(os.Getpid())
}

// isFlagSet reports whether the flag called name was given.
func isFlagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
