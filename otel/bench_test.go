package redlockotel

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/seed62cefe0a/redlock"
)

// BenchmarkLockUnlock measures a LockContext+UnlockContext cycle on three
// embedded servers, without an Observer and with this package's, reporting
// to an SDK MeterProvider and an SDK TracerProvider that keep what they
// get. The embedded servers run in this process, so the allocations count
// theirs too; only the difference between the two is the Observer's.
func BenchmarkLockUnlock(b *testing.B) {
	for _, bench := range []struct {
		name     string
		observer func(b *testing.B) *redlock.Observer
	}{
		{"observer=none", func(*testing.B) *redlock.Observer { return nil }},
		{"observer=otel", func(b *testing.B) *redlock.Observer { return newTelemetry(b).observer }},
	} {
		b.Run(bench.name, func(b *testing.B) {
			_, clients := servers(b, 3)
			var opts []redlock.Option
			if o := bench.observer(b); o != nil {
				opts = append(opts, redlock.WithObserver(o))
			}
			m := newClient(b, clients, opts...).NewMutex("bench")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.LockContext(ctx); err != nil {
					b.Fatal(err)
				}
				if err := m.UnlockContext(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkObserverCycle measures the Observer alone: the Acquired and
// Released events of one cycle, without Redis. The spans go to an SDK
// TracerProvider that keeps them, or to OpenTelemetry's no-op one.
func BenchmarkObserverCycle(b *testing.B) {
	for _, bench := range []struct {
		name   string
		noop   bool
		option []Option
	}{
		{name: "spans=sdk"},
		{name: "spans=noop", noop: true},
		{name: "spans=noop,WithLockName", noop: true, option: []Option{WithLockName()}},
	} {
		b.Run(bench.name, func(b *testing.B) {
			opts := bench.option
			if bench.noop {
				opts = append(opts, WithTracerProvider(noop.NewTracerProvider()))
			}
			o := newTelemetry(b, opts...).observer
			ctx := context.Background()
			start := time.Now()
			b.ReportAllocs()
			for b.Loop() {
				o.Acquired(redlock.AcquiredEvent{Context: ctx, Name: "bench", Start: start, Wait: time.Millisecond, Attempts: 1})
				o.Released(redlock.ReleasedEvent{Context: ctx, Name: "bench", Start: start, Duration: time.Millisecond, Held: time.Millisecond})
			}
		})
	}
}
