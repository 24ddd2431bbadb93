//go:build unix

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

const leaderUsage = `Usage:
  redlock leader [-url URL]... [-watch] [-json] NAME

Leader reads who leads the election NAME from a majority of the masters,
and prints "VALUE term=N ttl=D", or "none" when nobody leads. VALUE is
quoted, as Go quotes a string, when it is empty or holds a space or a
character that does not print. It exits 0 whether or not someone leads, and
70 if the masters' answers cannot tell: fewer than a majority answered, or
those that did disagree and the others failed.

With -watch, it prints the current state and then a line at each change
(a new term, a proclaimed value, or none when the leader resigned or its
term lapsed) until SIGINT, SIGTERM or SIGHUP, and then exits 0.

Examples:
  redlock leader scheduler
  redlock leader -watch -json scheduler
`

// leaderJSON is the object leader -json prints.
type leaderJSON struct {
	Name   string `json:"name"`
	Leader bool   `json:"leader"` // false: nobody leads
	Value  string `json:"value"`
	Term   uint64 `json:"term"`   // 0 when nobody leads
	TTLMs  int64  `json:"ttl_ms"` // 0 when nobody leads
}

func leaderCommand(args, env []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("redlock leader", flag.ContinueOnError)
	var urls urlFlag
	fs.Var(&urls, "url", "a Redis master's `URL`; repeat it for each master (default: $REDLOCK_URLS, comma-separated, or redis://127.0.0.1:6379/0)")
	asJSON := fs.Bool("json", false, `print JSON objects: {"name": NAME, "leader": bool, "value": string, "term": int, "ttl_ms": int}`)
	watch := fs.Bool("watch", false, "print a line at each change, until interrupted")
	name, _, exit, ok := parseNamed(fs, args, leaderUsage, false, stdout, stderr)
	if !ok {
		return exit
	}

	// Signals end -watch; they are caught from the start, so that one that
	// comes during the first read is not lost.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(signals)

	diagnostics := newDiagnostics(stderr, upAfter(defaultTTL))
	redis.SetLogger(diagnostics)
	client, err := redlock.Dial(masters(urls, env), redlock.WithLogger(diagnostics.logger()))
	if err != nil {
		return failure(stderr, err)
	}
	defer client.Close()
	e := client.NewElection(name)
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	state, err := e.Leader(ctx)
	cancel()
	if err != nil && !errors.Is(err, redlock.ErrNoLeader) {
		return failure(stderr, fmt.Errorf("election %q: %w", name, err))
	}
	p := printer{name: name, json: *asJSON, w: stdout}
	if !*watch {
		return p.print(state)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		<-signals
		stop()
	}()
	// Observe sends the current state first, which may differ from the
	// state just printed; a repeat of it is not printed.
	if code := p.print(state); code != 0 {
		return code
	}
	last := state
	for state := range e.Observe(ctx) {
		if state.Term == last.Term && state.Value == last.Value {
			continue
		}
		if code := p.print(state); code != 0 {
			return code
		}
		last = state
	}
	return 0
}

// printer prints states of the election name, as lines or JSON objects.
type printer struct {
	name string
	json bool
	w    io.Writer
}

// print prints state and returns the exit status so far.
func (p printer) print(state redlock.Leader) int {
	var err error
	switch {
	case p.json:
		var out []byte
		out, err = json.Marshal(leaderJSON{Name: p.name, Leader: state.Term != 0, Value: state.Value, Term: state.Term, TTLMs: state.TTL.Milliseconds()})
		if err == nil {
			_, err = fmt.Fprintf(p.w, "%s\n", out)
		}
	case state.Term == 0:
		_, err = fmt.Fprintln(p.w, "none")
	default:
		_, err = fmt.Fprintf(p.w, "%s term=%d ttl=%v\n", quoteValue(state.Value), state.Term, state.TTL.Round(time.Millisecond))
	}
	if err != nil {
		// stdout closed, as by a pipe's reader that exited.
		return exitFailure
	}
	return 0
}

// quoteValue returns v as leader prints it: as is, or quoted when it is
// empty or holds a space or a character that does not print, so that each
// state is one line that splits at its spaces.
func quoteValue(v string) string {
	if v == "" || strings.IndexFunc(v, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0 || strings.HasPrefix(v, `"`) {
		return strconv.Quote(v)
	}
	return v
}
