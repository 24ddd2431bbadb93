package redlockotel

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/seed62cefe0a/redlock"
)

// A Semaphore's permits and a Mutex's acquisitions through one Observer are
// told apart by redlock.kind, on every metric of a lock and on the spans; a
// node's errors, which no kind owns, carry none.
func TestKind(t *testing.T) {
	tel := newTelemetry(t)
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, redlock.WithObserver(tel.observer), redlock.WithTTL(lossTTL))
	s := c.NewSemaphore("encoders", 2)
	m := c.NewMutex("encoders")

	p, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.LockContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Both are extended (every 200ms), then the permit is lost and the
	// Mutex released.
	tel.metricsWhen(t, func(ms map[string]metricdata.Metrics) bool {
		return len(attributeSets(t, ms, "redlock.extend.duration")) >= 2
	})
	if _, err := c.NewMutex("encoders").TryLockContext(context.Background()); err == nil {
		t.Fatal("a second Mutex locked a held one")
	}
	for _, mr := range mrs {
		for _, key := range mr.Keys() {
			if strings.HasPrefix(key, "redlock:{encoders}:semaphore:slot:") {
				mr.Del(key)
			}
		}
	}
	waitDone(t, p.Context(), "the permit's loss")
	p.Release(context.Background())
	if err := m.UnlockContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	q, err := s.TryAcquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	q.Release(context.Background())

	ms := tel.metricsWhen(t, func(ms map[string]metricdata.Metrics) bool {
		return total(sum(t, ms, "redlock.lost"), "", "") == 1
	})
	for _, tt := range []struct {
		metric string
		kinds  []string // the kinds its points name
	}{
		{"redlock.acquire.duration", []string{"mutex", "semaphore"}},
		{"redlock.hold.duration", []string{"mutex", "semaphore"}},
		{"redlock.extend.duration", []string{"mutex", "semaphore"}},
		{"redlock.held", []string{"mutex", "semaphore"}},
		{"redlock.lost", []string{"semaphore"}},
	} {
		seen := map[string]bool{}
		for _, set := range attributeSets(t, ms, tt.metric) {
			kind := attr(set, kindKey)
			if kind == "" {
				t.Errorf("%s has a point with no %s: %v", tt.metric, kindKey, set.ToSlice())
			}
			seen[kind] = true
		}
		for _, kind := range tt.kinds {
			if !seen[kind] {
				t.Errorf("%s has no point with %s=%s; has %v", tt.metric, kindKey, kind, seen)
			}
		}
	}
	// The Mutex's points are the Mutex's own: its one acquisition, which
	// was released, and its refusal.
	acquire := histogram(t, ms, "redlock.acquire.duration")
	var mutexAcquired, permitsAcquired uint64
	for _, point := range acquire {
		if attr(point.Attributes, outcomeKey) != outcomeAcquired {
			continue
		}
		switch attr(point.Attributes, kindKey) {
		case "mutex":
			mutexAcquired += point.Count
		case "semaphore":
			permitsAcquired += point.Count
		}
	}
	if mutexAcquired != 1 || permitsAcquired != 2 {
		t.Errorf("acquire.duration counts %d acquisitions of the Mutex and %d permits; want 1 and 2", mutexAcquired, permitsAcquired)
	}
	if got := total(sum(t, ms, "redlock.held"), "", ""); got != 0 {
		t.Errorf("redlock.held = %d at the end; want 0", got)
	}
	for _, name := range []string{"redlock.acquire", "redlock.release"} {
		kinds := map[string]int{}
		for _, span := range tel.endedSpans(name) {
			kinds[spanAttr(span, kindKey)]++
		}
		if kinds["mutex"] == 0 || kinds["semaphore"] == 0 || len(kinds) != 2 {
			t.Errorf("%s spans by %s: %v; want mutex and semaphore only", name, kindKey, kinds)
		}
	}
}

// An Election's terms are recorded as acquisitions, with
// redlock.kind=election, on the metrics of a lock and on the spans.
func TestKindElection(t *testing.T) {
	tel := newTelemetry(t)
	_, clients := servers(t, 3)
	c := newClient(t, clients, redlock.WithObserver(tel.observer), redlock.WithTTL(lossTTL))
	e := c.NewElection("scheduler")
	term, err := e.Campaign(context.Background(), "node-a")
	if err != nil {
		t.Fatal(err)
	}
	tel.metricsWhen(t, func(ms map[string]metricdata.Metrics) bool {
		return len(attributeSets(t, ms, "redlock.extend.duration")) >= 1
	})
	if err := term.Resign(context.Background()); err != nil {
		t.Fatal(err)
	}
	ms := tel.metricsWhen(t, func(ms map[string]metricdata.Metrics) bool {
		return len(attributeSets(t, ms, "redlock.hold.duration")) >= 1
	})
	for _, metric := range []string{"redlock.acquire.duration", "redlock.hold.duration", "redlock.extend.duration", "redlock.held"} {
		sets := attributeSets(t, ms, metric)
		if len(sets) == 0 {
			t.Errorf("%s has no point for the term", metric)
		}
		for _, set := range sets {
			if kind := attr(set, kindKey); kind != "election" {
				t.Errorf("%s has a point with %s=%q; want election", metric, kindKey, kind)
			}
		}
	}
	if got := total(sum(t, ms, "redlock.held"), "", ""); got != 0 {
		t.Errorf("redlock.held = %d after Resign; want 0", got)
	}
	for _, name := range []string{"redlock.acquire", "redlock.release"} {
		spans := tel.endedSpans(name)
		if len(spans) != 1 || spanAttr(spans[0], kindKey) != "election" {
			t.Errorf("%d %s spans; want 1 with %s=election", len(spans), name, kindKey)
		}
	}
}
