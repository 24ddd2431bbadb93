//go:build unix

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

const statusUsage = `Usage:
  redlock status [-url URL]... [-json] [-n N] NAME

Status reads the lock NAME on every master without taking it, and prints
"free", or "held ttl=D waiters=N": D is how long a majority of the masters
will keep the lock unless its holder extends it, and N is the number of
redlock processes (and other users of the Go package) queued for it. It
exits 0 whether the lock is held or free, and 70 if fewer than a majority of
the masters answered.

With -n N, NAME is a semaphore of N permits, as for run -n, and status
prints "held=H/N waiters=W": H permits are held on a majority of the
masters, and W waiters are queued. It exits 70 if the masters store another
number of permits for NAME.

Examples:
  redlock status nightly-report
  redlock status -json nightly-report
  redlock status -n 4 encoders
`

// statusJSON is the object status -json prints.
type statusJSON struct {
	Name    string `json:"name"`
	Held    bool   `json:"held"`
	TTLMs   int64  `json:"ttl_ms"` // 0 when free
	Waiters int    `json:"waiters"`
}

// semaphoreStatusJSON is the object status -json -n N prints.
type semaphoreStatusJSON struct {
	Name    string `json:"name"`
	Permits int    `json:"permits"`
	Held    int    `json:"held"`
	Waiters int    `json:"waiters"`
}

// statusTimeout bounds status as a whole; the library bounds each master's
// answer by its node timeout, 500ms with the default TTL.
const statusTimeout = 10 * time.Second

func statusCommand(args, env []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("redlock status", flag.ContinueOnError)
	var urls urlFlag
	fs.Var(&urls, "url", "a Redis master's `URL`; repeat it for each master (default: $REDLOCK_URLS, comma-separated, or redis://127.0.0.1:6379/0)")
	asJSON := fs.Bool("json", false, `print a JSON object: {"name": NAME, "held": bool, "ttl_ms": int, "waiters": int}, or with -n {"name": NAME, "permits": N, "held": int, "waiters": int}`)
	var permits permitsFlag
	fs.Var(&permits, "n", "read the semaphore NAME of `N` permits, as run -n holds them")
	name, _, exit, ok := parseNamed(fs, args, statusUsage, false, stdout, stderr)
	if !ok {
		return exit
	}

	diagnostics := newDiagnostics(stderr, upAfter(defaultTTL))
	redis.SetLogger(diagnostics)
	client, err := redlock.Dial(masters(urls, env), redlock.WithLogger(diagnostics.logger()))
	if err != nil {
		return failure(stderr, err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	if permits.set {
		return semaphoreStatus(ctx, client.NewSemaphore(name, permits.n), *asJSON, stdout, stderr)
	}
	status, err := client.NewMutex(name).Status(ctx)
	if err != nil {
		return failure(stderr, fmt.Errorf("lock %q: %w", name, err))
	}
	if *asJSON {
		out, err := json.Marshal(statusJSON{Name: name, Held: status.Held, TTLMs: status.TTL.Milliseconds(), Waiters: status.Waiters})
		if err != nil {
			return failure(stderr, err)
		}
		fmt.Fprintf(stdout, "%s\n", out)
		return 0
	}
	if !status.Held {
		fmt.Fprintln(stdout, "free")
		return 0
	}
	fmt.Fprintf(stdout, "held ttl=%v waiters=%d\n", status.TTL.Round(time.Millisecond), status.Waiters)
	return 0
}

// semaphoreStatus prints the status of s, a line or with asJSON an object,
// and returns the exit status.
func semaphoreStatus(ctx context.Context, s *redlock.Semaphore, asJSON bool, stdout, stderr io.Writer) int {
	status, err := s.Status(ctx)
	if err != nil {
		return failure(stderr, fmt.Errorf("semaphore %q: %w", s.Name(), err))
	}
	if asJSON {
		out, err := json.Marshal(semaphoreStatusJSON{Name: s.Name(), Permits: status.Permits, Held: status.Held, Waiters: status.Waiters})
		if err != nil {
			return failure(stderr, err)
		}
		fmt.Fprintf(stdout, "%s\n", out)
		return 0
	}
	fmt.Fprintf(stdout, "held=%d/%d waiters=%d\n", status.Held, status.Permits, status.Waiters)
	return 0
}
