package redlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// seqObserver records the events in the order they were delivered.
type seqObserver struct {
	mu  sync.Mutex
	seq []string
}

func (s *seqObserver) add(format string, args ...any) {
	s.mu.Lock()
	s.seq = append(s.seq, fmt.Sprintf(format, args...))
	s.mu.Unlock()
}

func (s *seqObserver) events() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seq...)
}

func (s *seqObserver) observer() *Observer {
	return &Observer{
		Acquired:    func(e AcquiredEvent) { s.add("Acquired(token=%d)", e.Token) },
		NotAcquired: func(e NotAcquiredEvent) { s.add("NotAcquired(%v)", e.Err) },
		Released:    func(e ReleasedEvent) { s.add("Released(lost=%v, err=%v)", e.Lost, e.Err) },
		Extended:    func(e ExtendedEvent) { s.add("Extended(%v)", e.Outcome) },
		Lost:        func(e LostEvent) { s.add("Lost(%v)", e.Cause) },
		NodeError:   func(e NodeErrorEvent) { s.add("NodeError(node=%d, %v)", e.Node, e.Err) },
	}
}

// A loss that Unlock finds (a quorum answers that the key is gone) is
// reported to the Observer, as Lost and as a Released of a lost lock.
func TestLossFoundAtUnlockIsObserved(t *testing.T) {
	mrs, clients := servers(t, 3)
	seq := &seqObserver{}
	c := newClient(t, clients, WithObserver(seq.observer()), WithTTL(5*time.Second))
	m := c.NewMutex("found")
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	settle(t, c.nodes)
	for _, mr := range mrs {
		mr.Del(m.key) // the lock is gone on every master (expired, failover, FLUSHALL...)
	}
	err := m.UnlockContext(t.Context())
	t.Logf("UnlockContext = %v", err)
	t.Logf("events: %q", seq.events())
	if !errors.Is(err, ErrLockLost) {
		t.Fatalf("UnlockContext = %v; want ErrLockLost", err)
	}
	lostSeen, releasedLost := false, false
	for _, e := range seq.events() {
		lostSeen = lostSeen || strings.HasPrefix(e, "Lost(")
		releasedLost = releasedLost || strings.HasPrefix(e, "Released(lost=true")
	}
	if !lostSeen && !releasedLost {
		t.Errorf("UnlockContext reported ErrLockLost, but the Observer heard no Lost event and a Released event with Lost=false")
	}
}

// The same loss, found by an Unlock inside Do's func, is Do's error too.
func TestDoReportsALossFoundByAnUnlockInsideFn(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithTTL(5*time.Second))
	m := c.NewMutex("found")
	var inner error
	err := m.Do(t.Context(), func(held context.Context) error {
		waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
		settle(t, c.nodes)
		for _, mr := range mrs {
			mr.Del(m.key)
		}
		inner = m.UnlockContext(context.Background())
		return nil
	})
	t.Logf("UnlockContext inside fn = %v", inner)
	t.Logf("Do = %v", err)
	if errors.Is(inner, ErrLockLost) && !errors.Is(err, ErrLockLost) {
		t.Errorf("the lock was lost (UnlockContext inside fn said so), but Do's error does not wrap ErrLockLost")
	}
}

// An extension round in flight when the holding is lost (here at its
// maximum hold) is not reported after the Lost event.
func TestNoExtendedEventAfterLost(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	seq := &seqObserver{}
	c := newClient(t, clients, WithObserver(seq.observer()), WithTTL(2*time.Second),
		WithNodeTimeout(300*time.Millisecond), WithWatchdogInterval(100*time.Millisecond), WithMaxHold(110*time.Millisecond))
	for _, h := range hooks {
		h.add(&fault{match: isKind("extend"), before: 80 * time.Millisecond})
	}
	m := c.NewMutex("inflight")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	<-held.Done()
	time.Sleep(300 * time.Millisecond) // the extension in flight comes back
	if err := m.UnlockContext(t.Context()); !errors.Is(err, ErrLockLost) {
		t.Errorf("UnlockContext = %v; want ErrLockLost", err)
	}
	events := seq.events()
	t.Logf("events: %q", events)
	lostAt := -1
	for i, e := range events {
		if strings.HasPrefix(e, "Lost(") {
			lostAt = i
		}
		if lostAt >= 0 && i > lostAt && strings.HasPrefix(e, "Extended(") {
			t.Errorf("event %d, %s, comes after the Lost event %d for the same holding", i, e, lostAt)
		}
	}
}

// A failed call to a node outside a round (here the release of an abandoned
// attempt's grant) is reported to NodeError.
func TestNodeErrorOfABackgroundRelease(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 1)
	seq := &seqObserver{}
	c := newClient(t, clients, WithObserver(seq.observer()), WithTTL(5*time.Second))
	m := c.NewMutex("abandoned")
	mrs[1].Set(m.key, "someone-else")
	mrs[2].Set(m.key, "someone-else")
	injected := errors.New("injected: node 0 failed the release")
	hooks[0].add(&fault{match: isKind("release"), fail: injected})
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrTaken) {
		t.Fatalf("TryLockContext = %v; want ErrTaken", err)
	}
	waitFor(t, "the release of node 0's grant to be sent", func() bool {
		return len(hooks[0].sent(isKind("release"))) > 0
	})
	settle(t, c.nodes)
	for _, cl := range hooks[0].sent(isKind("release")) {
		t.Logf("node 0 release: %s", cl.result)
	}
	t.Logf("events: %q", seq.events())
	for _, e := range seq.events() {
		if strings.HasPrefix(e, "NodeError(node=0") {
			return
		}
	}
	t.Errorf("node 0's release call failed (%v), but NodeError was not called", injected)
}

// The Lost event of a holding comes before its Released event and the next
// holding's Acquired, though held ends before Lost is delivered. The gate
// widens the window between the cancel and the Lost call in lose.
func TestLostComesBeforeReleasedAndTheNextAcquired(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	seq := &seqObserver{}
	gate := &gateHandler{match: "lock lost", entered: make(chan struct{}, 1), open: make(chan struct{})}
	c := newClient(t, clients, WithObserver(seq.observer()), WithTTL(500*time.Millisecond),
		WithWatchdogInterval(50*time.Millisecond), WithLogger(slog.New(gate)))
	m := c.NewMutex("order")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	hooks[0].pause()
	hooks[1].pause()
	<-held.(*heldContext).Context.Done() // the expiry timer cancelled held
	select {
	case <-gate.entered:
	case <-time.After(5 * time.Second):
		close(gate.open)
		t.Fatal("lose did not log")
	}
	hooks[0].resume()
	hooks[1].resume()
	// Unlock and Lock again while lose is held at its log line, then let
	// it go on.
	var uerr, lerr error
	relocked := make(chan struct{})
	go func() {
		defer close(relocked)
		uerr = m.UnlockContext(t.Context())
		_, lerr = m.LockContext(t.Context())
	}()
	select {
	case <-relocked:
	case <-time.After(100 * time.Millisecond):
	}
	close(gate.open)
	<-relocked
	if lerr != nil {
		t.Fatal(lerr)
	}
	waitFor(t, "the Lost event", func() bool {
		for _, e := range seq.events() {
			if strings.HasPrefix(e, "Lost(") {
				return true
			}
		}
		return false
	})
	m.Unlock()
	t.Logf("UnlockContext = %v", uerr)
	events := seq.events()
	t.Logf("events: %q", events)
	acquired := 0
	for _, e := range events {
		switch {
		case strings.HasPrefix(e, "Acquired("):
			acquired++
		case strings.HasPrefix(e, "Lost("):
			if acquired > 1 {
				t.Errorf("the Lost event of the first holding came after the Acquired event of the second")
			}
		}
	}
}

// The release round waits while its refusals could still make a quorum: here
// the key is gone on every node, node 2's release fails, and node 1's
// refusal comes 20ms after node 0's. UnlockContext and Do report the loss.
func TestReleaseWaitsForAQuorumOfRefusals(t *testing.T) {
	for _, viaDo := range []bool{false, true} {
		t.Run(fmt.Sprintf("Do=%v", viaDo), func(t *testing.T) {
			mrs, clients, hooks := faultyServers(t, 3, 1)
			c := newClient(t, clients, WithTTL(5*time.Second))
			m := c.NewMutex("refused")
			lose := func() {
				waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
				settle(t, c.nodes)
				for _, mr := range mrs {
					mr.Del(m.key) // gone everywhere: the lock is lost
				}
				hooks[1].add(&fault{match: isKind("release"), before: 20 * time.Millisecond})
				hooks[2].add(&fault{match: isKind("release"), fail: errors.New("injected: node 2 is down")})
			}
			var err error
			if viaDo {
				err = m.Do(t.Context(), func(context.Context) error { lose(); return nil })
			} else {
				if _, err := m.LockContext(t.Context()); err != nil {
					t.Fatal(err)
				}
				lose()
				err = m.UnlockContext(t.Context())
			}
			settle(t, c.nodes)
			for i, h := range hooks {
				for _, cl := range h.sent(isKind("release")) {
					t.Logf("node %d release: %s", i, cl.result)
				}
			}
			t.Logf("error = %v", err)
			if !errors.Is(err, ErrLockLost) {
				t.Errorf("the key was gone on every node (nodes 0 and 1, a quorum, answered so), but the error does not wrap ErrLockLost")
			}
		})
	}
}

// An acquisition that ends before any attempt (its context done already,
// the Client closed, a bad configuration) is told as NotAcquired, by a
// Semaphore as by a Mutex.
func TestEarlyEndsAreToldAsNotAcquired(t *testing.T) {
	_, clients := servers(t, 3)
	var mu sync.Mutex
	told := map[Kind][]error{}
	obs := &Observer{NotAcquired: func(ev NotAcquiredEvent) {
		mu.Lock()
		defer mu.Unlock()
		told[ev.Kind] = append(told[ev.Kind], ev.Err)
	}}
	c, err := New(clients, WithObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	m, s := c.NewMutex("early"), c.NewSemaphore("early", 2)
	bad := c.NewSemaphore("early", 0)
	done, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := m.LockContext(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("LockContext with a done ctx = %v", err)
	}
	if _, err := s.Acquire(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire with a done ctx = %v", err)
	}
	if _, err := bad.Acquire(t.Context()); err == nil {
		t.Fatal("Acquire on a Semaphore of 0 permits succeeded")
	}
	c.Close()
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("TryLockContext after Close = %v", err)
	}
	if _, err := s.TryAcquire(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("TryAcquire after Close = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := told[KindMutex]; len(got) != 2 || !errors.Is(got[0], context.Canceled) || !errors.Is(got[1], ErrClosed) {
		t.Errorf("the Mutex told %v; want a cancel, then ErrClosed", got)
	}
	if got := told[KindSemaphore]; len(got) != 3 || !errors.Is(got[0], context.Canceled) || !errors.Is(got[2], ErrClosed) {
		t.Errorf("the Semaphore told %v; want a cancel, the bad configuration, then ErrClosed", got)
	}
}
