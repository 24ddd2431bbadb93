package redlock

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is an Observer that keeps every event, from any goroutine.
type recorder struct {
	mu          sync.Mutex
	acquired    []AcquiredEvent
	notAcquired []NotAcquiredEvent
	released    []ReleasedEvent
	extended    []ExtendedEvent
	lost        []LostEvent
	nodeErrors  []NodeErrorEvent
}

func (r *recorder) observer() *Observer {
	return &Observer{
		Acquired:    func(e AcquiredEvent) { r.mu.Lock(); r.acquired = append(r.acquired, e); r.mu.Unlock() },
		NotAcquired: func(e NotAcquiredEvent) { r.mu.Lock(); r.notAcquired = append(r.notAcquired, e); r.mu.Unlock() },
		Released:    func(e ReleasedEvent) { r.mu.Lock(); r.released = append(r.released, e); r.mu.Unlock() },
		Extended:    func(e ExtendedEvent) { r.mu.Lock(); r.extended = append(r.extended, e); r.mu.Unlock() },
		Lost:        func(e LostEvent) { r.mu.Lock(); r.lost = append(r.lost, e); r.mu.Unlock() },
		NodeError:   func(e NodeErrorEvent) { r.mu.Lock(); r.nodeErrors = append(r.nodeErrors, e); r.mu.Unlock() },
	}
}

type callerKey struct{}

// count returns how many events of a kind have been seen, under the lock.
func (r *recorder) count(kind func(r *recorder) int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return kind(r)
}

func TestObserverAcquiredAndReleased(t *testing.T) {
	_, clients := servers(t, 3)
	rec := &recorder{}
	c := newClient(t, clients, WithObserver(rec.observer()), WithFencing())
	m := c.NewMutex("o")
	ctx := context.WithValue(t.Context(), callerKey{}, "caller")
	held, err := m.LockContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := m.UnlockContext(ctx); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.acquired) != 1 {
		t.Fatalf("%d Acquired events; want 1", len(rec.acquired))
	}
	a := rec.acquired[0]
	if a.Name != "o" || a.Attempts != 1 || a.Wait <= 0 || a.Token == 0 || a.Context.Value(callerKey{}) != "caller" || a.Start.IsZero() {
		t.Errorf("Acquired = %+v; want name o, 1 attempt, a wait, a token, and the caller's context", a)
	}
	if len(rec.released) != 1 {
		t.Fatalf("%d Released events; want 1", len(rec.released))
	}
	r := rec.released[0]
	if r.Name != "o" || r.Err != nil || r.Lost || r.Held < 20*time.Millisecond || r.Duration <= 0 || r.Context.Value(callerKey{}) != "caller" {
		t.Errorf("Released = %+v; want name o, no error, not lost, held at least 20ms", r)
	}
	if held.Err() == nil {
		t.Error("held not ended by Unlock")
	}
}

func TestObserverNotAcquiredSaysWhy(t *testing.T) {
	mrs, clients := servers(t, 3)
	rec := &recorder{}
	c := newClient(t, clients, WithObserver(rec.observer()), WithTTL(time.Second))
	holder := newClient(t, clients).NewMutex("o")
	holder.Lock()
	m := c.NewMutex("o")
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrTaken) {
		t.Fatalf("TryLockContext = %v; want ErrTaken", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := m.LockContext(ctx); err == nil {
		t.Fatal("LockContext of a held lock succeeded")
	}
	holder.Unlock()
	addrs := []string{mrs[0].Addr(), mrs[1].Addr(), mrs[2].Addr()}
	mrs[1].Close()
	mrs[2].Close()
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("TryLockContext = %v; want ErrNoQuorum", err)
	}
	// A node that did not answer in time is reported once its call ends.
	waitFor(t, "errors of nodes 1 and 2", func() bool {
		return rec.count(func(r *recorder) int {
			seen := map[int]bool{}
			for _, e := range r.nodeErrors {
				seen[e.Node] = true
			}
			return len(seen)
		}) == 2
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.notAcquired) != 3 || len(rec.acquired) != 0 {
		t.Fatalf("%d NotAcquired and %d Acquired events; want 3 and 0", len(rec.notAcquired), len(rec.acquired))
	}
	tests := []struct {
		want        error
		minAttempts int
	}{{ErrTaken, 1}, {context.DeadlineExceeded, 1}, {ErrNoQuorum, 1}}
	for i, tt := range tests {
		e := rec.notAcquired[i]
		if !errors.Is(e.Err, tt.want) || e.Attempts < tt.minAttempts || e.Name != "o" || e.Wait <= 0 {
			t.Errorf("NotAcquired[%d] = %+v; want an error wrapping %v, at least %d attempts", i, e, tt.want, tt.minAttempts)
		}
	}
	var down []int
	for _, e := range rec.nodeErrors {
		if e.Addr != addrs[e.Node] || e.Err == nil {
			t.Errorf("NodeError = %+v; want node %d's address %s and its error", e, e.Node, addrs[e.Node])
		}
		down = append(down, e.Node)
	}
	if !slices.Contains(down, 1) || !slices.Contains(down, 2) {
		t.Errorf("NodeError events for nodes %v; want nodes 1 and 2, which are down", down)
	}
}

func TestObserverExtended(t *testing.T) {
	_, clients := servers(t, 3)
	rec := &recorder{}
	c := newClient(t, clients, WithObserver(rec.observer()), WithTTL(300*time.Millisecond), WithWatchdogInterval(50*time.Millisecond))
	m := c.NewMutex("o")
	m.Lock()
	waitFor(t, "two extensions", func() bool { return rec.count(func(r *recorder) int { return len(r.extended) }) >= 2 })
	m.Unlock()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, e := range rec.extended {
		if e.Name != "o" || e.Outcome != ExtendOK || e.Latency <= 0 || e.Latency > 30*time.Millisecond {
			t.Errorf("Extended = %+v (%v); want name o, outcome ok, a latency within the 30ms node timeout", e, e.Outcome)
		}
	}
}

// TestObserverLost checks a Lost event for each cause, and the Released
// event of a lost lock.
func TestObserverLost(t *testing.T) {
	tests := []struct {
		cause LossCause
		opts  []Option
		lose  func(del, pause func(), c *Client)
	}{
		{LostRefused, nil, func(del, _ func(), _ *Client) { del() }},
		{LostDeadline, nil, func(_, pause func(), _ *Client) { pause() }},
		{LostMaxHold, []Option{WithMaxHold(100 * time.Millisecond)}, func(func(), func(), *Client) {}},
		{LostClosed, nil, func(_, _ func(), c *Client) { go c.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.cause.String(), func(t *testing.T) {
			mrs, clients, hooks := faultyServers(t, 3, 1)
			rec := &recorder{}
			opts := append([]Option{WithObserver(rec.observer()), WithTTL(500 * time.Millisecond), WithWatchdogInterval(50 * time.Millisecond)}, tt.opts...)
			c, err := New(clients, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			m := c.NewMutex("o")
			held, err := m.LockContext(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
			del := func() {
				for _, mr := range mrs {
					mr.Del(m.key)
				}
			}
			pause := func() {
				hooks[0].pause()
				hooks[1].pause()
			}
			tt.lose(del, pause, c)
			<-held.Done()
			waitFor(t, "the Lost event", func() bool { return rec.count(func(r *recorder) int { return len(r.lost) }) == 1 })
			hooks[0].resume()
			hooks[1].resume()
			rec.mu.Lock()
			e := rec.lost[0]
			rec.mu.Unlock()
			if e.Name != "o" || e.Cause != tt.cause || !errors.Is(e.Err, ErrLockLost) || e.Err != context.Cause(held) || e.Held <= 0 {
				t.Errorf("Lost = %+v (%v); want name o, cause %v, the held context's cause", e, e.Cause, tt.cause)
			}
			if tt.cause == LostClosed {
				return
			}
			if err := m.UnlockContext(t.Context()); !errors.Is(err, ErrLockLost) {
				t.Errorf("UnlockContext = %v; want ErrLockLost", err)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.released) != 1 || !rec.released[0].Lost || !errors.Is(rec.released[0].Err, ErrLockLost) {
				t.Errorf("Released events %+v; want one, of a lost lock", rec.released)
			}
			if len(rec.lost) != 1 {
				t.Errorf("%d Lost events; want 1", len(rec.lost))
			}
		})
	}
}

// TestObserverPanicIsContained checks that a panicking observer does not
// break the lock: the calls return as if it had not panicked, the loss is
// still handled, and the panic is logged.
func TestObserverPanicIsContained(t *testing.T) {
	mrs, clients := servers(t, 3)
	logs := &records{}
	boom := func(any) { panic("observer bug") }
	o := &Observer{
		Acquired:    func(e AcquiredEvent) { boom(e) },
		NotAcquired: func(e NotAcquiredEvent) { boom(e) },
		Released:    func(e ReleasedEvent) { boom(e) },
		Extended:    func(e ExtendedEvent) { boom(e) },
		Lost:        func(e LostEvent) { boom(e) },
		NodeError:   func(e NodeErrorEvent) { boom(e) },
	}
	c := newClient(t, clients, WithObserver(o), WithTTL(300*time.Millisecond), WithWatchdogInterval(50*time.Millisecond), WithLogger(slog.New(logs)))
	m := c.NewMutex("o")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatalf("LockContext with a panicking observer = %v", err)
	}
	time.Sleep(120 * time.Millisecond) // extensions
	if held.Err() != nil {
		t.Fatalf("held ended: %v; want the watchdog to carry on past a panicking observer", context.Cause(held))
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	for _, mr := range mrs {
		mr.Del(m.key)
	}
	<-held.Done()
	if err := m.UnlockContext(t.Context()); !errors.Is(err, ErrLockLost) {
		t.Errorf("UnlockContext = %v; want ErrLockLost", err)
	}
	if _, err := c.NewMutex("other").TryLockContext(t.Context()); err != nil {
		t.Errorf("TryLockContext after the panics = %v", err)
	}
	logged := map[string]bool{}
	logs.mu.Lock()
	for _, r := range logs.list {
		if r.Level == slog.LevelError && strings.Contains(r.Message, "observer panicked") {
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "event" {
					logged[a.Value.String()] = true
				}
				return true
			})
		}
	}
	logs.mu.Unlock()
	for _, event := range []string{"Acquired", "Released", "Extended", "Lost"} {
		if !logged[event] {
			t.Errorf("no Error log of the %s observer's panic; logged: %v", event, logged)
		}
	}
}

func TestMutexObserverReplacesTheClients(t *testing.T) {
	_, clients := servers(t, 1)
	clientRec, mutexRec := &recorder{}, &recorder{}
	c := newClient(t, clients, WithObserver(clientRec.observer()))
	m := c.NewMutex("o", WithObserver(mutexRec.observer()))
	m.Lock()
	m.Unlock()
	if n := clientRec.count(func(r *recorder) int { return len(r.acquired) + len(r.released) }); n != 0 {
		t.Errorf("the Client's observer got %d events of a Mutex with its own; want 0", n)
	}
	if n := mutexRec.count(func(r *recorder) int { return len(r.acquired) + len(r.released) }); n != 2 {
		t.Errorf("the Mutex's observer got %d events; want 2", n)
	}
}
