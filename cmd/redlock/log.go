//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// diagnostics is where the library's and go-redis's log lines go: to w, one
// whole line each, in the form of the command's own "redlock: ..." lines.
type diagnostics struct {
	w    io.Writer
	mu   sync.Mutex
	seen map[string]bool // the keys of the lines written once
	// downAt is, for each master's address, when a dial to it last failed.
	downAt map[string]time.Time
	// upAfter is how long a master must go without a failed dial to count
	// as up again, so that its next failure is reported once more.
	upAfter time.Duration
	now     func() time.Time
}

// newDiagnostics returns the diagnostics that write to w. A master that
// fails no dial for upAfter counts as up again.
func newDiagnostics(w io.Writer, upAfter time.Duration) *diagnostics {
	return &diagnostics{w: w, seen: map[string]bool{}, downAt: map[string]time.Time{}, upAfter: upAfter, now: time.Now}
}

// upAfter is how long a master must go without a failed dial to count as up
// again, for a lock with the given TTL. While redlock holds the lock it calls
// every master each third of the TTL, and while it waits, at least every
// second or so: a master that stays down fails more often than that.
func upAfter(ttl time.Duration) time.Duration {
	return max(ttl, 2*time.Second)
}

// once writes line unless a line with key was written before.
func (d *diagnostics) once(key, line string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen[key] {
		return nil
	}
	d.seen[key] = true
	_, err := io.WriteString(d.w, line)
	return err
}

// logger returns the logger given to the library: its warnings, such as a
// failed extension, each message once: the watchdog warns of every failed
// extension, and a few a second say no more than the first. The library's
// "lock lost" is left out, since the command reports the loss with what it
// did about it.
func (d *diagnostics) logger() *slog.Logger {
	return slog.New(&lineHandler{d: d})
}

// Printf routes a line of go-redis (see redis.SetLogger). A failed dial is
// written when its master goes down: the first time, and again only once
// the master has gone upAfter without one, since go-redis logs every dial,
// many a second while a master is down. Other lines are written once each.
func (d *diagnostics) Printf(_ context.Context, format string, v ...any) {
	text := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	addr, err, isDial := dialFailure(v)
	if !isDial {
		d.once(text, "redlock: go-redis: "+oneLineText(text)+"\n")
		return
	}
	d.mu.Lock()
	now := d.now()
	defer d.mu.Unlock()
	last, down := d.downAt[addr]
	d.downAt[addr] = now
	if down && now.Sub(last) < d.upAfter {
		return
	}
	fmt.Fprintf(d.w, "redlock: cannot connect to master %s: %s\n", addr, oneLineText(err.Error()))
}

// dialFailure finds, among a go-redis log line's arguments, a failed dial,
// and returns the address it was to and the error.
func dialFailure(args []any) (addr string, err error, ok bool) {
	for _, arg := range args {
		e, isErr := arg.(error)
		var op *net.OpError
		if isErr && errors.As(e, &op) && op.Op == "dial" && op.Addr != nil {
			return op.Addr.String(), e, true
		}
	}
	return "", nil, false
}

// oneLineText joins the lines of text with "; ".
func oneLineText(text string) string {
	return strings.ReplaceAll(text, "\n", "; ")
}

// lineHandler writes records of level Warn and above as
// "redlock: message key=value ...", each message once.
type lineHandler struct {
	d     *diagnostics
	attrs []slog.Attr
}

func (h *lineHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn
}

func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "redlock: lock lost" {
		return nil
	}
	var b strings.Builder
	b.WriteString("redlock: ")
	b.WriteString(strings.TrimPrefix(r.Message, "redlock: "))
	write := func(a slog.Attr) bool {
		// Joined errors span lines; one line reads better in a log.
		value := oneLineText(a.Value.Resolve().String())
		if strings.ContainsAny(value, " =\"") {
			value = fmt.Sprintf("%q", value)
		}
		fmt.Fprintf(&b, " %s=%s", a.Key, value)
		return true
	}
	for _, a := range h.attrs {
		write(a)
	}
	r.Attrs(write)
	b.WriteByte('\n')
	return h.d.once(r.Message, b.String())
}

func (h *lineHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &lineHandler{d: h.d, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)}
}

// WithGroup returns h: the library does not group its attributes, and one
// line needs no nesting.
func (h *lineHandler) WithGroup(string) slog.Handler { return h }
