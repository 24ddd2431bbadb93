//go:build unix

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// newLogger returns the logger given to the library: its warnings, such as
// a failed extension, go to w as one line each, in the form of the command's
// own diagnostics.
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(&lineHandler{w: w, shared: &shared{seen: map[string]bool{}}})
}

// lineHandler writes records of level Warn and above as
// "redlock: message key=value ...", each message once: the watchdog warns of
// every failed extension, and a few a second say no more than the first. The
// library's "lock lost" is left out, since the command reports the loss with
// what it did about it.
type lineHandler struct {
	w     io.Writer
	attrs []slog.Attr
	*shared
}

// shared is the state of the handlers that WithAttrs makes from one another.
type shared struct {
	mu   sync.Mutex
	seen map[string]bool // messages written
}

func (h *lineHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn
}

func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[r.Message] || r.Message == "redlock: lock lost" {
		return nil
	}
	h.seen[r.Message] = true
	var b strings.Builder
	b.WriteString("redlock: ")
	b.WriteString(strings.TrimPrefix(r.Message, "redlock: "))
	write := func(a slog.Attr) bool {
		// Joined errors span lines; one line reads better in a log.
		value := strings.ReplaceAll(a.Value.Resolve().String(), "\n", "; ")
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
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *lineHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &lineHandler{w: h.w, shared: h.shared, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)}
}

// WithGroup returns h: the library does not group its attributes, and one
// line needs no nesting.
func (h *lineHandler) WithGroup(string) slog.Handler { return h }
