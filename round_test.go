package redlock

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestQuorum(t *testing.T) {
	for _, tt := range []struct{ nodes, want int }{{1, 1}, {2, 2}, {3, 2}, {4, 3}, {5, 3}, {7, 4}} {
		if got := quorum(tt.nodes); got != tt.want {
			t.Errorf("quorum(%d) = %d; want %d", tt.nodes, got, tt.want)
		}
	}
}

func TestDecided(t *testing.T) {
	tests := []struct {
		oks, fails, hung, nodes int
		want                    bool
	}{
		{0, 0, 0, 3, false},
		{1, 0, 0, 3, false},
		{2, 0, 0, 3, true}, // won
		{1, 1, 0, 3, false},
		{0, 2, 0, 3, true}, // a quorum can no longer be reached
		{2, 2, 0, 5, false},
		{2, 3, 0, 5, true},
		{3, 2, 0, 5, true},
		{1, 0, 0, 1, true},
		{0, 1, 0, 1, true},
		{1, 1, 1, 3, true},  // only the hung node could still make a quorum
		{2, 1, 2, 5, true},  // likewise with two hung of five
		{2, 0, 2, 5, false}, // one healthy node is still to answer
		{3, 0, 2, 5, true},  // won without the hung nodes
	}
	for _, tt := range tests {
		if got := decided(tt.oks, tt.fails, tt.hung, tt.nodes); got != tt.want {
			t.Errorf("decided(%d oks, %d fails, %d hung, %d nodes) = %v; want %v", tt.oks, tt.fails, tt.hung, tt.nodes, got, tt.want)
		}
	}
}

func TestValidityEnd(t *testing.T) {
	start := time.Now()
	cfg := defaultConfig()
	got := validityEnd(start, cfg.ttl, cfg.drift())
	if want := start.Add(8*time.Second - 82*time.Millisecond); !got.Equal(want) {
		t.Errorf("validityEnd = %v; want %v", got, want)
	}
	// The monotonic reading must survive, so that wall-clock steps do not
	// move the deadline.
	if s := got.String(); !strings.Contains(s, "m=+") {
		t.Errorf("validityEnd lost the monotonic clock reading: %s", s)
	}
}

func TestFanOutReturnsAtQuorumDespiteAHungNode(t *testing.T) {
	_, clients := servers(t, 2)
	rc, hole := hungClient(t)
	c := newClient(t, append(clients, rc), WithNodeTimeout(time.Second), WithTTL(10*time.Second))
	t.Cleanup(hole.close)
	m := c.NewMutex("hung")
	// The Client's first call checks, once, that its nodes are servers of
	// their own, and waits up to the node timeout for the hung one.
	start := time.Now()
	m.Lock()
	m.Unlock()
	if first := time.Since(start); first > 1900*time.Millisecond {
		t.Errorf("the first Lock+Unlock took %v; want at most the 1s node timeout of the identity check, and a round at quorum", first)
	}
	start = time.Now()
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatalf("LockContext: %v", err)
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatalf("UnlockContext: %v", err)
	}
	// The node timeout is 1s and the hung node's read timeout 30s: returning
	// well before either shows the rounds did not wait for the hung node.
	if elapsed := time.Since(start); elapsed > 900*time.Millisecond {
		t.Errorf("Lock+Unlock took %v with one hung node of 3; want it to return at quorum, well under the 1s node timeout", elapsed)
	}
}

func TestFanOutTimeoutFiresWhateverTheClientOptions(t *testing.T) {
	_, clients := servers(t, 1)
	rc1, hole1 := hungClient(t)
	rc2, hole2 := hungClient(t)
	c := newClient(t, append(clients, rc1, rc2), WithNodeTimeout(100*time.Millisecond))
	t.Cleanup(hole1.close)
	t.Cleanup(hole2.close)
	assumeVerified(c, 1, 2)
	start := time.Now()
	_, err := c.NewMutex("hung").TryLockContext(t.Context())
	elapsed := time.Since(start)
	if !errors.Is(err, ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("TryLockContext error = %v; want ErrNotAcquired and a node deadline", err)
	}
	var nodeErr *NodeError
	if !errors.As(err, &nodeErr) || nodeErr.Node == 0 {
		t.Errorf("TryLockContext error = %v; want a *NodeError for node 1 or 2", err)
	}
	// The clients' read timeout is 30s; only our own timer ends the round.
	if elapsed > 5*time.Second {
		t.Errorf("TryLockContext took %v; want the 100ms node timeout to end it, not the 30s read timeout", elapsed)
	}
}

func TestRoundsDoNotWaitForHungNodes(t *testing.T) {
	mrs, clients := servers(t, 3)
	rc1, hole1 := hungClient(t)
	rc2, hole2 := hungClient(t)
	c := newClient(t, append(clients, rc1, rc2), WithNodeTimeout(300*time.Millisecond))
	t.Cleanup(hole1.close)
	t.Cleanup(hole2.close)
	assumeVerified(c, 3, 4)
	// Another holder has node 0, so only the two hung nodes could make a
	// quorum with nodes 1 and 2.
	mrs[0].Set("redlock:{h}", "other")
	m := c.NewMutex("h")
	start := time.Now()
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("first TryLockContext = %v; want ErrNotAcquired", err)
	}
	if first := time.Since(start); first < 300*time.Millisecond {
		t.Fatalf("first attempt took %v; want it to wait the 300ms node timeout for nodes not yet known to hang", first)
	}
	start = time.Now()
	_, err := m.TryLockContext(t.Context())
	if second := time.Since(start); second > 150*time.Millisecond {
		t.Errorf("second attempt took %v; want it decided without waiting for the hung nodes", second)
	}
	if !errors.Is(err, ErrNotAcquired) || !strings.Contains(err.Error(), "not waited for") {
		t.Errorf("second TryLockContext = %v; want ErrNotAcquired naming the nodes not waited for", err)
	}
	// The failed attempts' grants on nodes 1 and 2 are released in the
	// background; let that finish, and free node 0.
	settle(t, c.nodes[:3]) // not the hung ones: their calls take 30s
	mrs[0].Del("redlock:{h}")
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Errorf("TryLockContext with nodes 0-2 free and 3-4 hung = %v; want success", err)
	} else {
		m.Unlock()
	}
}

func TestOutcomeToken(t *testing.T) {
	out := outcome[uint64]{
		replies: []reply[uint64]{
			{answered: true, ok: true, value: 7},
			{answered: true, ok: false, value: 99},
			{answered: true, ok: true, value: 41},
			{answered: false, ok: true, value: 3},
		},
	}
	// Node 1 refused and node 3 has not answered: only granting nodes count.
	if got, want := fencingToken(out), uint64(42); got != want {
		t.Errorf("fencingToken = %d; want %d", got, want)
	}
	if got, want := fencingToken(outcome[uint64]{replies: []reply[uint64]{{answered: true, ok: true}}}), uint64(1); got != want {
		t.Errorf("fencingToken with no counters = %d; want %d", got, want)
	}
}

// A grant or a repair whose holding ended while its call waited for the
// node's worker is not sent: nothing writes the key after the end. (The
// third review suspected the repair case: the watchdog checks that the
// holding is held, then launches, and Unlock may begin in between.)
func TestCallsOfAnEndedHoldingAreNotSent(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 7)
	c := newClient(t, clients, WithTTL(10*time.Second))
	m := c.NewMutex("ended")
	m.Lock()
	h := m.current.Load()
	until, _ := h.validity()
	m.Unlock()
	settle(t, c.nodes)
	before := make([]int, len(hooks))
	for i, hook := range hooks {
		before[i] = len(hook.sent(nil))
	}
	// As if the watchdog had decided on a repair, and the acquisition round
	// on a grant, just before Unlock began: the calls reach the workers now.
	timeout := m.spec.nodeTimeout
	heard := 0
	all := func(int, reply[none], int) bool {
		heard++
		return heard == len(c.nodes)
	}
	launch(c, t.Context(), roundSpec[none]{call: m.kind.repair(h.value, until), timeout: timeout, heard: (*repairing)(h), live: (*holding)(h)}).wait(t.Context(), all)
	heard = 0
	launch(c, t.Context(), roundSpec[uint64]{call: m.kind.grant(h.value), timeout: timeout, heard: (*granting)(h), live: (*unended)(h)}).wait(t.Context(), func(i int, _ reply[uint64], hung int) bool {
		return all(i, reply[none]{}, hung)
	})
	settle(t, c.nodes)
	for i, hook := range hooks {
		if sent := hook.sent(nil)[before[i]:]; len(sent) > 0 {
			t.Errorf("node %d: %d calls sent for a holding that had ended, the first %s %v", i, len(sent), sent[0].kind, sent[0].values)
		}
	}
	if n := keysOn(mrs, m.key); n > 0 {
		t.Errorf("%s on %d nodes after Unlock", m.key, n)
	}
}
