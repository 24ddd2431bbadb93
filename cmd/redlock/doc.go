//go:build unix

// Redlock runs a command while it holds a distributed lock on a majority of
// independent Redis masters, so that the command runs on one machine at a
// time: a cron job, a migration, a deploy step.
//
// Usage:
//
//	redlock run    [-url URL]... [-ttl 8s] [-wait D] [-grace D] [-fencing | -n N] NAME -- COMMAND [ARG]...
//	redlock status [-url URL]... [-json] [-n N] NAME
//	redlock elect  [-url URL]... [-ttl 8s] [-wait D] [-grace D] [-value V] NAME -- COMMAND [ARG]...
//	redlock leader [-url URL]... [-watch] [-json] NAME
//
// The masters are given by -url, once for each, or else by REDLOCK_URLS, a
// comma-separated list, or else are the one at redis://127.0.0.1:6379/0.
// The lock is that of the Go package github.com/seed62cefe0a/redlock, whose
// documentation says what Redlock promises and what it does not. redlock
// runs on Unix systems: it relies on process groups.
//
// # run
//
// run waits for the lock NAME, for as long as it takes unless -wait bounds
// the wait; -wait 0 makes a single attempt, as flock -n does. It then runs
// COMMAND in a process group of its own, with REDLOCK_NAME set to NAME and,
// with -fencing, REDLOCK_TOKEN set to a fencing token that is larger than
// that of every earlier holder of the lock. Stdin, stdout and stderr pass
// through. While COMMAND runs, the lock is extended every third of its TTL
// (-ttl, 8s by default).
//
// If the lock is lost, because too few masters confirmed it before its
// validity ended, redlock kills COMMAND's process group at once with
// SIGKILL. With -grace D it sends SIGTERM instead, and SIGKILL D later: the
// command may then run past the lock's validity by up to D. redlock then
// exits 76, once the masters that answer have taken the release of the key,
// or 250ms later at most.
//
// SIGINT, SIGTERM and SIGHUP sent to redlock are passed on to COMMAND's
// process group. When COMMAND exits, redlock kills what it left running in
// its process group, releases the lock and exits with COMMAND's status.
//
// redlock cannot catch SIGKILL, nor the OOM killer. On Linux, COMMAND is
// started with a parent-death signal, SIGKILL, so that the kernel kills it
// when redlock dies, however it dies. That covers COMMAND alone: what
// COMMAND started in its process group runs on, as does COMMAND itself if
// it executes a set-user-ID or set-group-ID program, for which the kernel
// clears the parent-death signal. On other systems nothing kills COMMAND
// when redlock is killed, and it may run on after the lock expires.
//
// Run from an interactive shell, in the foreground of a terminal, redlock
// hands the terminal's foreground to COMMAND's process group while COMMAND
// runs, so that COMMAND can read from the terminal and Ctrl-C reaches it
// directly. COMMAND starts with SIGTSTP ignored, so that Ctrl-Z cannot
// suspend it while redlock keeps the lock for it.
//
// # Semaphores
//
// With -n N, run holds one of the N permits of the semaphore NAME, the
// package's Semaphore, instead of the lock NAME: up to N commands run at
// once, on every machine together. Everything above holds for a permit as
// for the lock: the wait, -wait, the kill on loss, -grace, the signals and
// the exit statuses. Every user of NAME must give the same N: a run whose
// masters store another number for NAME exits 70, naming both. N must be in
// [1, 1024], or run exits 64; -fencing does not apply.
//
// # Elections
//
// elect campaigns in the election NAME, the package's Election: candidates
// lead one at a time, in the order they came. While it leads, it runs
// COMMAND as run does under a lock, with REDLOCK_NAME set and REDLOCK_TERM
// set to the term's number, which is larger than every earlier term's: a
// resource that remembers the largest term it has seen can turn a deposed
// leader away. When COMMAND exits, redlock resigns, and the next candidate
// leads at once. The leader's value, which leader prints, is -value, or
// hostname:pid. The term is extended, lost and killed for as a lock is,
// with -ttl and -grace as for run; -wait bounds the campaign and must be
// positive, since a campaign has no single attempt.
//
// leader prints who leads NAME: "VALUE term=N ttl=D", or "none". VALUE is
// quoted as Go quotes strings when it is empty, or holds a space or a
// character that does not print. With -watch it prints the current state
// and then a line at each change (a new term, a proclaimed value, none)
// until SIGINT, SIGTERM or SIGHUP, and exits 0. With -json each line is a
// JSON object.
//
// # Diagnostics
//
// redlock writes its diagnostics, and those of the library and of go-redis,
// to stderr, one line each, starting with "redlock: ". A master it cannot
// connect to is reported once while it stays down, and again only after it
// has gone a TTL (at least 2s) without a failed connection, as when it came
// back and went down once more.
//
// # status
//
// status prints "free", or "held ttl=D waiters=N" where D is the time left
// before the lock expires unless its holder extends it, and N is the number
// of waiters queued for it. With -n N it reads the semaphore NAME and prints
// "held=H/N waiters=W": H of its N permits are held. With -json it prints a
// JSON object instead.
//
// # Exit status
//
//   - COMMAND's own, or 128+N if signal N killed it, or if SIGINT, SIGTERM
//     or SIGHUP sent to redlock ended its wait for the lock;
//   - 64, a usage error: a bad flag, a flag value the lock rejects (a -ttl
//     too small to leave any validity, a -n outside [1, 1024]), no NAME, no
//     -- before COMMAND;
//   - 70, any other failure: a bad URL, masters that refuse the lock's
//     commands (an ACL denial, say), a semaphore whose masters store another
//     -n, a COMMAND that cannot be started, or a status that too few masters
//     answered;
//   - 75, the lock was not acquired within -wait, or on the single attempt of
//     -wait 0, because another process holds it or too few masters answered;
//     for elect, the election was not won within -wait;
//   - 76, the lock or the term was lost while COMMAND ran, and COMMAND was
//     killed; or lost before COMMAND could start, and COMMAND did not run.
//
// status and leader exit 0 whether or not the lock is held or someone
// leads, and 70 if too few masters answered. redlock -h and each
// subcommand's -h print the usage and exit 0.
//
// # Examples
//
// A cron job that runs on one machine at a time, and skips its turn while
// another machine still runs it:
//
//	*/5 * * * * redlock run -wait 0 nightly-report -- /usr/local/bin/report
//
// A migration that passes its fencing token on, so that the database can
// refuse a stale holder:
//
//	redlock run -wait 5m -fencing migrations -- sh -c 'migrate --fence "$REDLOCK_TOKEN"'
//
// At most four encoders at once, across every machine:
//
//	redlock run -n 4 encoders -- ffmpeg -i in.mov out.mp4
//
// One scheduler at a time, and the next one takes over when it dies:
//
//	redlock elect scheduler -- ./scheduler --term "$REDLOCK_TERM"
//	redlock leader -watch scheduler
package main
