package redlock

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestStatus(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithTTL(10*time.Second))
	m := c.NewMutex("s")
	status := func(m *Mutex) Status {
		t.Helper()
		s, err := m.Status(t.Context())
		if err != nil {
			t.Fatalf("Status: %v", err)
		}
		return s
	}

	if got := status(m); got != (Status{}) {
		t.Errorf("Status of a free lock = %+v; want the zero Status", got)
	}

	m.Lock()
	settle(t, c.nodes)
	got := status(m)
	if !got.Held || !got.Mine || got.TTL <= 9*time.Second || got.TTL > 10*time.Second || got.Waiters != 0 {
		t.Errorf("Status while this Mutex holds the lock = %+v; want Held, Mine, TTL in (9s, 10s], no waiters", got)
	}
	other := newClient(t, clients).NewMutex("s")
	if got := status(other); !got.Held || got.Mine {
		t.Errorf("Status by another Mutex = %+v; want Held, not Mine", got)
	}

	// The quorum-th longest PTTL: two of three nodes keep it at least 4s.
	for i, ttl := range []time.Duration{2 * time.Second, 4 * time.Second, 6 * time.Second} {
		mrs[i].SetTTL(m.key, ttl)
	}
	if got := status(other); got.TTL != 4*time.Second {
		t.Errorf("Status.TTL with PTTLs of 2s, 4s and 6s = %v; want 4s", got.TTL)
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	for range 2 {
		go func() {
			defer func() { done <- struct{}{} }()
			newClient(t, clients).NewMutex("s").LockContext(ctx)
		}()
	}
	waitFor(t, "two queued waiters", func() bool { return len(queueOf(mrs[0], "s")) == 2 && len(queueOf(mrs[2], "s")) == 2 })
	if got := status(other); got.Waiters != 2 {
		t.Errorf("Status.Waiters with two waiters queued = %d; want 2", got.Waiters)
	}
	cancel()
	<-done
	<-done
	settle(t, c.nodes)
	if got := status(other); got.Waiters != 0 {
		t.Errorf("Status.Waiters once the waiters gave up = %d; want 0", got.Waiters)
	}

	m.Unlock()
	settle(t, c.nodes)
	if got := status(m); got != (Status{}) {
		t.Errorf("Status after Unlock = %+v; want the zero Status", got)
	}

	// A key on a minority of nodes is not held.
	mrs[0].Set(m.key, "someone")
	if got := status(m); got.Held {
		t.Errorf("Status with the key on 1 of 3 nodes = %+v; want not Held", got)
	}
	// Keys of different owners on a quorum of nodes: held, by nobody in
	// particular, and nobody can acquire it until they expire.
	mrs[1].Set(m.key, "someone else")
	if got := status(m); !got.Held || got.Mine {
		t.Errorf("Status with two owners on 1 node each = %+v; want Held, not Mine", got)
	}
	// A foreign key with no expiry counts as the longest TTL.
	mrs[1].Set(m.key, "someone")
	if got := status(m); !got.Held || got.TTL < 100*365*24*time.Hour {
		t.Errorf("Status with a key without expiry on 2 nodes = %+v; want Held and the longest TTL", got)
	}

	mrs[1].Close()
	if _, err := m.Status(t.Context()); err != nil {
		t.Errorf("Status with 1 of 3 nodes down = %v; want the quorum's answer", err)
	}
	mrs[2].Close()
	if _, err := m.Status(t.Context()); err == nil || !strings.Contains(err.Error(), "fewer than a quorum") {
		t.Errorf("Status with 2 of 3 nodes down = %v; want an error naming the missing quorum", err)
	}
}

func TestStatusOfAClosedClient(t *testing.T) {
	_, clients := servers(t, 1)
	c, err := New(clients)
	if err != nil {
		t.Fatal(err)
	}
	m := c.NewMutex("s")
	c.Close()
	if _, err := m.Status(t.Context()); err != ErrClosed {
		t.Errorf("Status after Close = %v; want ErrClosed", err)
	}
	if _, err := c.NewMutex("").Status(t.Context()); err == nil {
		t.Error("Status of a Mutex with an empty name = nil error; want the configuration error")
	}
}

// Status waits for every node's answer, each for no longer than the node
// timeout, even from a node an earlier round marked hung: here nodes 0 and
// 2 hold the key, and node 2, marked hung, has recovered.
func TestStatusWaitsForANodeMarkedHung(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 1)
	c := newClient(t, clients, WithTTL(10*time.Second), WithNodeTimeout(100*time.Millisecond))
	m := c.NewMutex("s")
	m.Lock()
	defer m.Unlock()
	settle(t, c.nodes)
	mrs[1].Del(m.key) // node 1 lost the key (restarted, say); nodes 0 and 2 still hold it

	// One call to node 2 times out: node 2 is marked hung.
	hooks[2].pause()
	other := c.NewMutex("other")
	if !other.TryLock() {
		t.Fatal("other TryLock failed")
	}
	defer other.Unlock()
	waitFor(t, "node 2 marked hung", func() bool { return c.nodes[2].hung.Load() })
	hooks[2].resume()
	time.Sleep(50 * time.Millisecond)
	// Node 2 answers within a fifth of the node timeout from now on.
	hooks[2].add(&fault{match: isKind("script"), before: 20 * time.Millisecond})
	if !c.nodes[2].hung.Load() {
		t.Fatal("node 2 no longer marked hung")
	}

	start := time.Now()
	s, err := m.Status(t.Context())
	t.Logf("Status = %+v, err = %v, took %v; node 2 holds key: %v", s, err, time.Since(start), mrs[2].Exists(m.key))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Held || !s.Mine {
		t.Errorf("Status = %+v; want Held and Mine: nodes 0 and 2 (a quorum) hold this Mutex's key, and node 2 answers within the node timeout", s)
	}
}

// Status fails if ctx ends before every node has answered, and at once if
// it ended before the call.
func TestStatusWithAnEndedContextFails(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients)
	m := c.NewMutex("s")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	ok := 0
	for range 200 {
		if _, err := m.Status(ctx); err == nil {
			ok++
		}
		settle(t, c.nodes)
	}
	if ok > 0 {
		t.Errorf("Status with a ctx cancelled before the call succeeded %d times of 200; want an error every time", ok)
	}
}

// Status counts only the queued waiters that are alive: not one whose
// process died, whose time as alive has passed.
func TestStatusCountsOnlyLiveWaiters(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithRetryDelay(10 * time.Second), WithRetryJitter(0)}
	holder := newClient(t, clients, opts...).NewMutex("live")
	holder.Lock()
	defer holder.Unlock()
	waiter := newClient(t, clients, opts...).NewMutex("live")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		waiter.LockContext(ctx)
	}()
	defer func() { cancel(); <-done }()
	waitFor(t, "the waiter to queue", func() bool {
		for _, mr := range mrs {
			if len(queueOf(mr, "live")) != 1 {
				return false
			}
		}
		return true
	})
	for _, mr := range mrs {
		mr.RPush(holder.key+queueSuffix, "deadclient.expired")
		mr.ZAdd(holder.key+aliveSuffix, float64(time.Now().Add(-time.Second).UnixMilli()), "deadclient.expired")
		mr.RPush(holder.key+queueSuffix, "deadclient.unknown")
	}
	status, err := holder.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if status.Waiters != 1 {
		t.Errorf("Status.Waiters with one live waiter and two dead ones queued = %d; want 1", status.Waiters)
	}
}
