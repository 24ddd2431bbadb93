//go:build unix

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Exit statuses. COMMAND's own status passes through otherwise, or 128+N if
// signal N killed it, or ended redlock's wait for the lock. The numbers below
// 76 are those of sysexits.h.
const (
	// exitUsage (EX_USAGE) is a bad flag, a flag value the library rejects
	// (a -n outside [1, redlock.MaxPermits]), a missing NAME or COMMAND, or
	// an unknown subcommand.
	exitUsage = 64
	// exitFailure (EX_SOFTWARE) is any other failure: a bad URL, a Redis
	// that refuses the lock's scripts or commands, a semaphore whose masters
	// store another -n, a COMMAND that cannot be started, a status that no
	// quorum answered.
	exitFailure = 70
	// exitNotAcquired (EX_TEMPFAIL) means the lock was not acquired within
	// -wait: it was taken, or too few masters answered. COMMAND did not run.
	exitNotAcquired = 75
	// exitLost means the lock was lost while COMMAND ran, and COMMAND's
	// process group was killed, or before COMMAND started, which it then
	// did not.
	exitLost = 76
)

// defaultTTL is the lock's TTL when -ttl is not given, the library's default.
const defaultTTL = 8 * time.Second

const usageText = `Usage:
  redlock run    [-url URL]... [-ttl 8s] [-wait D] [-grace D] [-fencing | -n N] NAME -- COMMAND [ARG]...
  redlock status [-url URL]... [-json] [-n N] NAME
  redlock elect  [-url URL]... [-ttl 8s] [-wait D] [-grace D] [-value V] NAME -- COMMAND [ARG]...
  redlock leader [-url URL]... [-watch] [-json] NAME

redlock run holds the Redlock lock NAME on a majority of the Redis masters
while COMMAND runs, and releases it when COMMAND exits; with -n N, it holds
one of the N permits of the semaphore NAME, so that up to N commands run at
once. redlock status tells whether NAME is held, or how many of its permits
are. redlock elect runs COMMAND while this process leads the election NAME,
and redlock leader tells who leads it, or with -watch, each change.

The masters are the -url flags, or else the comma-separated URLs in
REDLOCK_URLS, or else redis://127.0.0.1:6379/0.

Exit status of run and elect: COMMAND's own, or 128+N if signal N killed
it; 75 if the lock was not acquired (or the election not won) within -wait;
76 if the lock or the term was lost and COMMAND was killed; 64 for a usage
error; 70 for any other failure.

Example, a cron job that runs on one machine at a time and skips its turn
while another machine still runs it:
  redlock run -wait 0 nightly-report -- /usr/local/bin/report

Run 'redlock run -h', 'redlock status -h', 'redlock elect -h' or
'redlock leader -h' for the flags of each.
`

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdin, os.Stdout, os.Stderr))
}

// run runs the command line args with the environment env and returns the
// exit status.
func run(args, env []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return runCommand(args[1:], env, stdin, stdout, stderr)
	case "status":
		return statusCommand(args[1:], env, stdout, stderr)
	case "elect":
		return electCommand(args[1:], env, stdin, stdout, stderr)
	case "leader":
		return leaderCommand(args[1:], env, stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usageText)
		return 0
	default:
		return usageError(stderr, "", fmt.Errorf("unknown subcommand %q; want run, status, elect or leader", args[0]))
	}
}

// usageError prints err on one line and returns exitUsage. sub names the
// subcommand whose -h the line points to.
func usageError(stderr io.Writer, sub string, err error) int {
	help := "redlock -h"
	if sub != "" {
		help = "redlock " + sub + " -h"
	}
	fmt.Fprintf(stderr, "redlock: %v (see '%s')\n", err, help)
	return exitUsage
}

// failure prints err and returns exitFailure.
func failure(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "redlock: %s\n", trimPrefix(err))
	return exitFailure
}

// trimPrefix returns err's text without the library's "redlock: " prefix,
// which the command's own lines already carry.
func trimPrefix(err error) string {
	return strings.TrimPrefix(err.Error(), "redlock: ")
}

// parse parses args with fs, whose errors it does not print, and returns
// the positional arguments. Flags may come before or after them: parsing
// goes on after each positional argument. It returns flag.ErrHelp for -h.
// parseNamed parses the arguments of a command that names one lock: its
// flags and NAME, and, for a command that runs one, "--" and COMMAND. It
// returns false with the exit status when there is nothing to run: help
// was asked for (0), or a usage error was printed (64).
func parseNamed(fs *flag.FlagSet, args []string, usage string, withCommand bool, stdout, stderr io.Writer) (name string, command []string, exit int, ok bool) {
	sub := strings.TrimPrefix(fs.Name(), "redlock ")
	flagArgs, dashes := args, false
	if withCommand {
		flagArgs, command, dashes = splitCommand(args)
	}
	positional, err := parse(fs, flagArgs)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printUsage(stdout, fs, usage)
		return "", nil, 0, false
	case err != nil:
	case len(positional) == 0:
		err = errors.New("missing NAME")
	case withCommand && (len(positional) > 1 || !dashes):
		err = errors.New("missing -- between NAME and COMMAND")
	case len(positional) > 1:
		err = fmt.Errorf("unexpected %q after NAME", positional[1])
	case withCommand && len(command) == 0:
		err = errors.New("missing COMMAND after --")
	default:
		err = validName(positional[0])
	}
	if err != nil {
		return "", nil, usageError(stderr, sub, err), false
	}
	return positional[0], command, 0, true
}

func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// urlFlag collects the values of a repeated -url.
type urlFlag []string

func (u *urlFlag) String() string { return strings.Join(*u, ",") }

func (u *urlFlag) Set(url string) error {
	if url == "" {
		return errors.New("empty URL")
	}
	*u = append(*u, url)
	return nil
}

// masters returns the URLs of the masters: the -url flags, or else those in
// REDLOCK_URLS, or else none, which makes Dial use its default.
func masters(flags urlFlag, env []string) []string {
	if len(flags) > 0 {
		return flags
	}
	var urls []string
	for url := range strings.SplitSeq(lookupEnv(env, "REDLOCK_URLS"), ",") {
		if url = strings.TrimSpace(url); url != "" {
			urls = append(urls, url)
		}
	}
	return urls
}

// lookupEnv returns the last value of key in env, as os.Getenv would.
func lookupEnv(env []string, key string) string {
	value := ""
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			value = v
		}
	}
	return value
}

// validName reports a lock name that the library would reject, as a usage
// error rather than a failure: an empty one, or one with a brace, which
// would break the hash tag of the lock's keys.
func validName(name string) error {
	switch {
	case name == "":
		return errors.New("NAME is empty")
	case strings.ContainsAny(name, "{}"):
		return fmt.Errorf("NAME %q has a brace, which the lock's keys cannot hold", name)
	}
	return nil
}

// printUsage prints a subcommand's usage text and its flags.
func printUsage(w io.Writer, fs *flag.FlagSet, text string) {
	fmt.Fprint(w, text)
	fmt.Fprintln(w, "\nFlags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}
