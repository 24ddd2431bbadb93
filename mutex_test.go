package redlock

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLockUnlock(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	m := c.NewMutex("job")
	if got := m.Name(); got != "job" {
		t.Errorf("Name() = %q; want %q", got, "job")
	}
	if until := m.Until(); !until.IsZero() {
		t.Errorf("Until() before Lock = %v; want zero", until)
	}
	before := time.Now()
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatalf("LockContext: %v", err)
	}
	after := time.Now()
	// Validity is measured from the start of the winning round.
	validity := 8*time.Second - 82*time.Millisecond
	if until := m.Until(); until.Before(before.Add(validity)) || until.After(after.Add(validity)) {
		t.Errorf("Until() = %v; want within [%v, %v]", until, before.Add(validity), after.Add(validity))
	}
	if got := keysOn(mrs, "redlock:{job}"); got < 2 {
		t.Errorf("%d of 3 nodes have the key after Lock; want at least 2", got)
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatalf("UnlockContext: %v", err)
	}
	if held.Err() == nil {
		t.Error("held is not done after Unlock")
	}
	if cause := context.Cause(held); errors.Is(cause, ErrLockLost) {
		t.Errorf("Cause(held) after Unlock = %v; want no ErrLockLost", cause)
	}
	if !m.Until().IsZero() {
		t.Errorf("Until() after Unlock = %v; want zero", m.Until())
	}
	// Unlock returns at quorum; the last node's delete may still be in flight.
	waitFor(t, "keys gone after Unlock", func() bool { return keysOn(mrs, "redlock:{job}") == 0 })
	if err := m.UnlockContext(t.Context()); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second UnlockContext = %v; want ErrNotHeld", err)
	}
}

func TestGoroutinesSharingAMutexAreSerialised(t *testing.T) {
	_, clients := servers(t, 3)
	m := newClient(t, clients).NewMutex("shared")
	var o overlaps
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				o.section(m)
			}
		})
	}
	wg.Wait()
	o.check(t, 80)
}

func TestClientsExcludeEachOther(t *testing.T) {
	_, clients := servers(t, 3)
	var o overlaps
	var wg sync.WaitGroup
	for range 4 {
		m := newClient(t, clients, WithRetryDelay(time.Millisecond), WithRetryJitter(2*time.Millisecond)).NewMutex("contended")
		wg.Go(func() {
			for range 10 {
				o.section(m)
			}
		})
	}
	wg.Wait()
	o.check(t, 40)
}

func TestLockToleratesAMinorityOfBrokenNodes(t *testing.T) {
	mrs, clients := servers(t, 3)
	mrs[0].RequireAuth("secret")
	m := newClient(t, clients).NewMutex("degraded")
	m.Lock() // must not panic: one denied node of three leaves a quorum
	m.Unlock()

	// With a second node down, no quorum is possible, but a down node may
	// come back: LockContext retries until its context ends.
	mrs[1].Close()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err := m.LockContext(ctx)
	var nodeErr *NodeError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &nodeErr) {
		t.Errorf("LockContext with one node denied and one down = %v; want DeadlineExceeded and the node errors", err)
	}
}

func TestFailedAttemptReleasesItsGrants(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	// Another holder has the lock on nodes 1 and 2 only: node 0 grants our
	// attempt, which then fails and must give node 0 back.
	mrs[1].Set("redlock:{split}", "other")
	mrs[2].Set("redlock:{split}", "other")
	if _, err := c.NewMutex("split").TryLockContext(t.Context()); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryLockContext = %v; want ErrNotAcquired", err)
	}
	settle(t, c.nodes[:1]) // the release runs in the background
	if mrs[0].Exists("redlock:{split}") {
		t.Error("node 0 still holds the key of a failed attempt")
	}
	if got, _ := mrs[1].Get("redlock:{split}"); got != "other" {
		t.Errorf("node 1 key = %q; want the other holder's value untouched", got)
	}
}

func TestFencingTokensIncrease(t *testing.T) {
	mrs, clients := servers(t, 3)
	first := newClient(t, clients, WithFencing()).NewMutex("fenced")
	second := newClient(t, clients, WithFencing()).NewMutex("fenced")
	var last uint64
	for i := range 10 {
		m := first
		if i%2 == 1 {
			m = second
		}
		m.Lock()
		token := m.Token()
		if token <= last {
			t.Fatalf("acquisition %d: Token() = %d; want more than the previous %d", i, token, last)
		}
		last = token
		m.Unlock()
		if got := m.Token(); got != 0 {
			t.Errorf("Token() after Unlock = %d; want 0", got)
		}
	}
	// The token reached a quorum before Lock returned.
	recorded := 0
	for _, mr := range mrs {
		if got, _ := mr.Get("redlock:{fenced}:fence"); got == "10" {
			recorded++
		}
	}
	if recorded < 2 {
		t.Errorf("%d of 3 nodes recorded token 10; want at least 2", recorded)
	}
}

func TestFencingTokenExceedsEveryQuorumCounter(t *testing.T) {
	mrs, clients := servers(t, 3)
	// An earlier holder recorded token 41 on nodes 1 and 2 (a quorum), and
	// node 0 missed it.
	mrs[1].Set("redlock:{f}:fence", "41")
	mrs[2].Set("redlock:{f}:fence", "41")
	m := newClient(t, clients, WithFencing()).NewMutex("f")
	m.Lock()
	defer m.Unlock()
	if got, want := m.Token(), uint64(42); got != want {
		t.Errorf("Token() = %d; want %d", got, want)
	}
}

func TestTokenWithoutFencingIsZero(t *testing.T) {
	mrs, clients := servers(t, 1)
	m := newClient(t, clients).NewMutex("plain")
	m.Lock()
	defer m.Unlock()
	if got := m.Token(); got != 0 {
		t.Errorf("Token() without WithFencing = %d; want 0", got)
	}
	if mrs[0].Exists("redlock:{plain}:fence") {
		t.Error("a counter key was written without WithFencing")
	}
}

func TestUnreadableCountersFailTheAcquisition(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients, WithFencing()).NewMutex("f")
	// A counter of the wrong type fails the acquisition on two nodes; no
	// token may be issued without reading a quorum's counters.
	mrs[0].HSet("redlock:{f}:fence", "x", "y")
	mrs[1].HSet("redlock:{f}:fence", "x", "y")
	if _, err := m.TryLockContext(t.Context()); err == nil {
		m.Unlock()
		t.Fatal("TryLockContext succeeded with the counters unreadable on 2 of 3 nodes")
	}
	settle(t, m.client.nodes)
	if got := keysOn(mrs, "redlock:{f}"); got != 0 {
		t.Errorf("%d nodes still hold the key of the failed acquisition; want 0", got)
	}
}

// A grant that lands while the fencing round fails is released.
func TestFailedFencingRoundReleasesALateGrant(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 1)
	c := newClient(t, clients, WithFencing())
	warm(t, c)
	// Node 2 grants at once, but its reply comes 100ms late, while the
	// fencing round, which fails on nodes 0 and 1 after 150ms, is running.
	hooks[2].add(&fault{match: isKind("acquire"), after: 100 * time.Millisecond, times: 1})
	for _, h := range hooks[:2] {
		h.add(&fault{match: isKind("fence"), before: 150 * time.Millisecond, fail: errors.New("LOADING simulated"), times: 1})
	}
	m := c.NewMutex("fenced")
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryLockContext = %v; want ErrNotAcquired", err)
	}
	waitFor(t, "the failed attempt's keys to go", func() bool { return keysOn(mrs, m.key) == 0 })
}

// A name or prefix that would break the hash tag is rejected.
func TestBrokenHashTagsAreRejected(t *testing.T) {
	_, clients := servers(t, 1)
	c := newClient(t, clients)
	for _, tt := range []struct {
		name string
		m    *Mutex
	}{
		{"name starting with }", c.NewMutex("}x")},
		{"name with {", c.NewMutex("a{b")},
		{"prefix ending with {}", c.NewMutex("x", WithKeyPrefix("app{}"))},
	} {
		if _, err := tt.m.TryLockContext(t.Context()); err == nil || !strings.Contains(err.Error(), "hash tag") {
			t.Errorf("%s: TryLockContext = %v; want an error naming the hash tag", tt.name, err)
		}
	}
	if _, err := New(clients, WithKeyPrefix("a}")); err == nil || !strings.Contains(err.Error(), "hash tag") {
		t.Errorf("New with prefix %q = %v; want an error naming the hash tag", "a}", err)
	}
}

// A nil context panics with a redlock: message, in the caller.
func TestNilContextPanics(t *testing.T) {
	_, clients := servers(t, 1)
	m := newClient(t, clients).NewMutex("nil")
	//lint:ignore SA1012 the point of the test
	var nilCtx context.Context
	for name, f := range map[string]func(){
		"LockContext":    func() { m.LockContext(nilCtx) },
		"TryLockContext": func() { m.TryLockContext(nilCtx) },
		"UnlockContext":  func() { m.UnlockContext(nilCtx) },
	} {
		if msg := panicMessage(f); !strings.HasPrefix(msg, "redlock: ") || !strings.Contains(msg, "nil") {
			t.Errorf("%s(nil) panicked with %q; want a redlock: message about the nil context", name, msg)
		}
	}
}
