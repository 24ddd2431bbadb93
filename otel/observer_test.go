package redlockotel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/seed62cefe0a/redlock"
)

// TestContendedRun checks the metrics and spans of a known run: workers
// that each run sections under one lock, in a context with a span.
func TestContendedRun(t *testing.T) {
	const workers, each, sections = 4, 25, 4 * 25
	const work = 200 * time.Microsecond
	tel := newTelemetry(t)
	_, clients := servers(t, 3)
	c := newClient(t, clients, redlock.WithObserver(tel.observer))
	ctx, parent := tel.tracers.Tracer("test").Start(context.Background(), "run")
	var inside, overlaps atomic.Int32
	var wg sync.WaitGroup
	began := time.Now()
	for range workers {
		wg.Go(func() {
			m := c.NewMutex("contended")
			for range each {
				err := m.Do(ctx, func(context.Context) error {
					if inside.Add(1) > 1 {
						overlaps.Add(1)
					}
					time.Sleep(work)
					inside.Add(-1)
					return nil
				})
				if err != nil {
					t.Errorf("Do: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	parent.End()
	if n := overlaps.Load(); n != 0 {
		t.Fatalf("%d sections overlapped; want 0", n)
	}

	ms := tel.metrics(t)
	acquire := histogram(t, ms, "redlock.acquire.duration")
	if len(acquire) != 1 {
		t.Fatalf("acquire.duration has %d points; want 1, outcome=acquired: %v", len(acquire), acquire)
	}
	if got := attr(acquire[0].Attributes, outcomeKey); got != outcomeAcquired {
		t.Errorf("acquire.duration outcome = %q; want %q", got, outcomeAcquired)
	}
	if got := acquire[0].Count; got != sections {
		t.Errorf("acquire.duration count = %d; want %d", got, sections)
	}
	// The workers wait side by side: together no longer than the run each.
	if s := acquire[0].Sum; s <= 0 || s > workers*elapsed.Seconds() {
		t.Errorf("acquire.duration sum = %vs; want in (0, %v]", s, workers*elapsed.Seconds())
	}
	hold := histogram(t, ms, "redlock.hold.duration")
	if len(hold) != 1 || attr(hold[0].Attributes, outcomeKey) != outcomeReleased {
		t.Fatalf("hold.duration points = %v; want one, outcome=released", hold)
	}
	if got := hold[0].Count; got != sections {
		t.Errorf("hold.duration count = %d; want %d", got, sections)
	}
	// Holds do not overlap: together they fit in the run.
	if s := hold[0].Sum; s < sections*work.Seconds() || s > elapsed.Seconds() {
		t.Errorf("hold.duration sum = %vs; want in [%v, %v]", s, sections*work.Seconds(), elapsed.Seconds())
	}
	if got := total(sum(t, ms, "redlock.held"), "", ""); got != 0 {
		t.Errorf("redlock.held = %d at the end; want 0", got)
	}
	if got := total(sum(t, ms, "redlock.lost"), "", ""); got != 0 {
		t.Errorf("redlock.lost = %d; want 0", got)
	}

	for _, name := range []string{"redlock.acquire", "redlock.release"} {
		spans := tel.endedSpans(name)
		if len(spans) != sections {
			t.Errorf("%d %s spans; want %d", len(spans), name, sections)
		}
		for _, s := range spans {
			if got, want := s.Parent().SpanID(), parent.SpanContext().SpanID(); got != want {
				t.Errorf("%s span's parent = %v; want %v", name, got, want)
				break
			}
			if s.Status().Code != codes.Unset || !s.EndTime().After(s.StartTime()) {
				t.Errorf("%s span status %v, from %v to %v; want Unset, ending after it starts", name, s.Status(), s.StartTime(), s.EndTime())
				break
			}
		}
	}
}

// lossTTL is a short TTL for the tests of losses: the watchdog extends
// every 200ms, and the node timeout is 60ms.
const lossTTL = 600 * time.Millisecond

func TestLost(t *testing.T) {
	tests := []struct {
		name  string
		opts  []redlock.Option
		cause redlock.LossCause
		lose  func(mrs []*miniredis.Miniredis, key string) // makes the lock lost, or nil
	}{
		{name: "refused", cause: redlock.LostRefused, lose: deleteKey},
		{name: "max_hold", cause: redlock.LostMaxHold, opts: []redlock.Option{redlock.WithMaxHold(100 * time.Millisecond)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			mrs, clients := servers(t, 3)
			c := newClient(t, clients, append([]redlock.Option{redlock.WithObserver(tel.observer), redlock.WithTTL(lossTTL)}, tt.opts...)...)
			m := c.NewMutex("lost")
			held, err := m.LockContext(context.Background())
			if err != nil {
				t.Fatalf("LockContext: %v", err)
			}
			if tt.lose != nil {
				tt.lose(mrs, "redlock:{lost}")
			}
			waitDone(t, held, "the loss")
			if err := m.UnlockContext(context.Background()); !errors.Is(err, redlock.ErrLockLost) {
				t.Errorf("UnlockContext = %v; want ErrLockLost", err)
			}

			// The held context ends before the Lost event is observed.
			ms := tel.metricsWhen(t, func(ms map[string]metricdata.Metrics) bool { return len(sum(t, ms, "redlock.lost")) > 0 })
			lost := sum(t, ms, "redlock.lost")
			if len(lost) != 1 {
				t.Fatalf("redlock.lost points = %v; want one", lost)
			}
			if got, want := attr(lost[0].Attributes, causeKey), tt.cause.String(); got != want || lost[0].Value != 1 {
				t.Errorf("redlock.lost = %d with cause %q; want 1 with %q", lost[0].Value, got, want)
			}
			if got := total(sum(t, ms, "redlock.held"), "", ""); got != 0 {
				t.Errorf("redlock.held = %d at the end; want 0", got)
			}
			hold := histogram(t, ms, "redlock.hold.duration")
			if len(hold) != 1 || attr(hold[0].Attributes, outcomeKey) != outcomeLost || hold[0].Count != 1 {
				t.Errorf("hold.duration points = %v; want one, outcome=lost, count 1", hold)
			}
			release := tel.endedSpans("redlock.release")
			if len(release) != 1 {
				t.Fatalf("%d release spans; want 1", len(release))
			}
			if got := spanAttr(release[0], outcomeKey); got != outcomeLost {
				t.Errorf("release span outcome = %q; want %q", got, outcomeLost)
			}
			if got := release[0].Status().Code; got != codes.Error {
				t.Errorf("release span status = %v; want Error", got)
			}
		})
	}
}

// TestLostAtRelease checks a loss found only by the release: the key is
// gone from every server before the watchdog's next extension.
func TestLostAtRelease(t *testing.T) {
	tel := newTelemetry(t)
	mrs, clients := servers(t, 3)
	// A node whose grant the holding has not heard yet is skipped by the
	// release, which then misses the quorum of refusals that makes a loss:
	// the test waits for the first extension, long after the grants.
	observer := *tel.observer
	extended := make(chan struct{}, 1)
	observer.Extended = func(e redlock.ExtendedEvent) {
		tel.observer.Extended(e)
		select {
		case extended <- struct{}{}:
		default:
		}
	}
	c := newClient(t, clients, redlock.WithObserver(&observer), redlock.WithTTL(lossTTL))
	m := c.NewMutex("lost")
	if _, err := m.LockContext(context.Background()); err != nil {
		t.Fatalf("LockContext: %v", err)
	}
	select {
	case <-extended:
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for an extension")
	}
	// Unlock finds the loss, unless the next extension does first: the
	// metrics are the same either way.
	deleteKey(mrs, "redlock:{lost}")
	if err := m.UnlockContext(context.Background()); !errors.Is(err, redlock.ErrLockLost) {
		t.Fatalf("UnlockContext = %v; want ErrLockLost", err)
	}
	ms := tel.metricsWhen(t, func(ms map[string]metricdata.Metrics) bool { return len(sum(t, ms, "redlock.lost")) > 0 })
	if got := total(sum(t, ms, "redlock.lost"), causeKey, "refused"); got != 1 {
		t.Errorf("redlock.lost{cause=refused} = %d; want 1", got)
	}
	if got := total(sum(t, ms, "redlock.held"), "", ""); got != 0 {
		t.Errorf("redlock.held = %d at the end; want 0", got)
	}
	hold := histogram(t, ms, "redlock.hold.duration")
	if len(hold) != 1 || attr(hold[0].Attributes, outcomeKey) != outcomeLost {
		t.Errorf("hold.duration points = %v; want one, outcome=lost", hold)
	}
}

// TestEventSequences feeds the Observer the events of one acquisition, in
// each order the core may deliver them, and checks that the holding is
// counted once: held back to 0, one hold, and a loss only where there was
// one.
func TestEventSequences(t *testing.T) {
	ctx := context.Background()
	lostErr := fmt.Errorf("%w: gone", redlock.ErrLockLost)
	acquired := redlock.AcquiredEvent{Context: ctx, Name: "seq", Start: time.Now(), Wait: time.Millisecond, Attempts: 1}
	released := redlock.ReleasedEvent{Context: ctx, Name: "seq", Start: time.Now(), Duration: time.Millisecond, Held: time.Second}
	releasedLost := released
	releasedLost.Lost, releasedLost.Err = true, lostErr
	refusedAtRelease := released
	refusedAtRelease.Err, refusedAtRelease.Lost = lostErr, true
	lost := func(cause redlock.LossCause) redlock.LostEvent {
		return redlock.LostEvent{Name: "seq", Cause: cause, Held: time.Second, Err: lostErr}
	}
	tests := []struct {
		name   string
		events func(o *redlock.Observer)
		hold   string // the outcome of the one hold
		cause  string // of the one loss, or ""
	}{
		{"released", func(o *redlock.Observer) { o.Acquired(acquired); o.Released(released) }, outcomeReleased, ""},
		{"lost then released", func(o *redlock.Observer) {
			o.Acquired(acquired)
			o.Lost(lost(redlock.LostDeadline))
			o.Released(releasedLost)
		}, outcomeLost, "deadline"},
		{"released before its loss is observed", func(o *redlock.Observer) {
			o.Acquired(acquired)
			o.Released(releasedLost)
			o.Lost(lost(redlock.LostMaxHold))
		}, outcomeLost, "max_hold"},
		{"lost, never released", func(o *redlock.Observer) { o.Acquired(acquired); o.Lost(lost(redlock.LostClosed)) }, outcomeLost, "closed"},
		{"lost before acquired is observed", func(o *redlock.Observer) { o.Lost(lost(redlock.LostClosed)); o.Acquired(acquired) }, outcomeLost, "closed"},
		{"refused at release", func(o *redlock.Observer) {
			o.Acquired(acquired)
			o.Lost(lost(redlock.LostRefused))
			o.Released(refusedAtRelease)
		}, outcomeLost, "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			tt.events(tel.observer)
			ms := tel.metrics(t)
			if got := total(sum(t, ms, "redlock.held"), "", ""); got != 0 {
				t.Errorf("redlock.held = %d; want 0", got)
			}
			hold := histogram(t, ms, "redlock.hold.duration")
			if len(hold) != 1 || hold[0].Count != 1 || attr(hold[0].Attributes, outcomeKey) != tt.hold {
				t.Errorf("hold.duration points = %v; want one hold, outcome=%s", hold, tt.hold)
			}
			losses := sum(t, ms, "redlock.lost")
			switch {
			case tt.cause == "" && len(losses) != 0:
				t.Errorf("redlock.lost points = %v; want none", losses)
			case tt.cause != "" && (len(losses) != 1 || losses[0].Value != 1 || attr(losses[0].Attributes, causeKey) != tt.cause):
				t.Errorf("redlock.lost points = %v; want 1 with cause %s", losses, tt.cause)
			}
		})
	}
}

func TestNodeErrors(t *testing.T) {
	tel := newTelemetry(t)
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, redlock.WithObserver(tel.observer))
	down := mrs[2].Addr()
	mrs[2].Close()
	m := c.NewMutex("degraded")
	const cycles = 3
	for range cycles {
		if _, err := m.LockContext(context.Background()); err != nil {
			t.Fatalf("LockContext: %v", err)
		}
		if err := m.UnlockContext(context.Background()); err != nil {
			t.Fatalf("UnlockContext: %v", err)
		}
	}
	// A call's error is reported when the call ends, which may be after
	// its round.
	ms := tel.metricsWhen(t, func(ms map[string]metricdata.Metrics) bool { return len(sum(t, ms, "redlock.node.errors")) > 0 })
	points := sum(t, ms, "redlock.node.errors")
	if len(points) != 1 {
		t.Fatalf("node.errors points = %v; want one, for %s", points, down)
	}
	if got := attr(points[0].Attributes, addressKey); got != down {
		t.Errorf("node.errors server.address = %q; want %q", got, down)
	}
	if got := points[0].Value; got < 1 {
		t.Errorf("node.errors = %d; want at least 1", got)
	}
}

func TestNotAcquired(t *testing.T) {
	tel := newTelemetry(t)
	_, clients := servers(t, 3)
	holder := newClient(t, clients).NewMutex("busy")
	if _, err := holder.LockContext(context.Background()); err != nil {
		t.Fatalf("LockContext: %v", err)
	}
	defer holder.Unlock()
	m := newClient(t, clients, redlock.WithObserver(tel.observer)).NewMutex("busy")
	ctx, parent := tel.tracers.Tracer("test").Start(context.Background(), "try")
	_, err := m.TryLockContext(ctx)
	parent.End()
	if !errors.Is(err, redlock.ErrTaken) {
		t.Fatalf("TryLockContext = %v; want ErrTaken", err)
	}

	acquire := histogram(t, tel.metrics(t), "redlock.acquire.duration")
	if len(acquire) != 1 || attr(acquire[0].Attributes, outcomeKey) != outcomeTaken || acquire[0].Count != 1 {
		t.Errorf("acquire.duration points = %v; want one, outcome=taken, count 1", acquire)
	}
	spans := tel.endedSpans("redlock.acquire")
	if len(spans) != 1 {
		t.Fatalf("%d acquire spans; want 1", len(spans))
	}
	s := spans[0]
	if got := s.Status().Code; got != codes.Error {
		t.Errorf("acquire span status = %v; want Error", got)
	}
	if got, want := s.Parent().SpanID(), parent.SpanContext().SpanID(); got != want {
		t.Errorf("acquire span's parent = %v; want %v", got, want)
	}
	if got := spanAttr(s, outcomeKey); got != outcomeTaken {
		t.Errorf("acquire span outcome = %q; want %q", got, outcomeTaken)
	}
	if got := spanAttr(s, attemptsKey); got != "1" {
		t.Errorf("acquire span attempts = %q; want 1", got)
	}
}

// TestLockName checks that every metric of a lock carries its name with
// WithLockName, and none without.
func TestLockName(t *testing.T) {
	for _, named := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "WithLockName"}[named], func(t *testing.T) {
			var opts []Option
			if named {
				opts = append(opts, WithLockName())
			}
			tel := newTelemetry(t, opts...)
			mrs, clients := servers(t, 3)
			c := newClient(t, clients, redlock.WithObserver(tel.observer), redlock.WithTTL(lossTTL))
			m := c.NewMutex("named")
			held, err := m.LockContext(context.Background())
			if err != nil {
				t.Fatalf("LockContext: %v", err)
			}
			// An extension, then a loss, then the failed try of another.
			time.Sleep(lossTTL / 2)
			deleteKey(mrs, "redlock:{named}")
			waitDone(t, held, "the loss")
			other := c.NewMutex("named")
			if err := m.UnlockContext(context.Background()); !errors.Is(err, redlock.ErrLockLost) {
				t.Errorf("UnlockContext = %v; want ErrLockLost", err)
			}
			if _, err := other.LockContext(context.Background()); err != nil {
				t.Fatalf("LockContext: %v", err)
			}
			if _, err := m.TryLockContext(context.Background()); err == nil {
				t.Fatal("TryLockContext of a held lock succeeded")
			}
			other.Unlock()

			ms := tel.metricsWhen(t, func(ms map[string]metricdata.Metrics) bool { return len(sum(t, ms, "redlock.lost")) > 0 })
			for _, name := range []string{"redlock.acquire.duration", "redlock.hold.duration", "redlock.extend.duration", "redlock.lost", "redlock.held"} {
				sets := attributeSets(t, ms, name)
				if len(sets) == 0 {
					t.Errorf("%s has no points", name)
				}
				for _, set := range sets {
					got, want := attr(set, nameKey), ""
					if named {
						want = "named"
					}
					if got != want {
						t.Errorf("%s point %v has redlock.name %q; want %q", name, set.ToSlice(), got, want)
					}
				}
			}
		})
	}
}

func TestAcquireOutcome(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, outcomeAcquired},
		{redlock.ErrNoQuorum, outcomeNoQuorum},
		{errors.Join(redlock.ErrNotAcquired, redlock.ErrTaken, redlock.ErrNoQuorum), outcomeNoQuorum},
		{errors.Join(redlock.ErrNotAcquired, context.DeadlineExceeded, redlock.ErrTaken), outcomeTaken},
		{errors.Join(redlock.ErrNotAcquired, context.Canceled), outcomeCanceled},
		{errors.Join(redlock.ErrNotAcquired, context.DeadlineExceeded), outcomeCanceled},
		{redlock.ErrClosed, outcomeError},
		{redlock.ErrNotAcquired, outcomeError},
	}
	for _, tt := range tests {
		if got := acquireOutcome(tt.err); got != tt.want {
			t.Errorf("acquireOutcome(%v) = %q; want %q", tt.err, got, tt.want)
		}
	}
}

// TestNoProviders checks that the default providers, OpenTelemetry's
// no-op globals here, serve the Observer.
func TestNoProviders(t *testing.T) {
	obs, err := NewObserver()
	if err != nil {
		t.Fatalf("NewObserver: %v", err)
	}
	_, clients := servers(t, 3)
	m := newClient(t, clients, redlock.WithObserver(obs)).NewMutex("plain")
	m.Lock()
	m.Unlock()
}

// deleteKey deletes key on every server.
func deleteKey(mrs []*miniredis.Miniredis, key string) {
	for _, mr := range mrs {
		mr.Del(key)
	}
}

// spanAttr returns the value of key among s's attributes, or "".
func spanAttr(s interface{ Attributes() []attribute.KeyValue }, key attribute.Key) string {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value.Emit()
		}
	}
	return ""
}
