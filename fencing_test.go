package redlock

import (
	"testing"
)

func TestOutcomeToken(t *testing.T) {
	out := outcome{
		replies: []reply{
			{answered: true, ok: true, counter: 7},
			{answered: true, ok: false, counter: 99},
			{answered: true, ok: true, counter: 41},
			{answered: false, ok: true, counter: 3},
		},
	}
	// Node 1 refused and node 3 has not answered: only granting nodes count.
	if got, want := out.token(), uint64(42); got != want {
		t.Errorf("token() = %d; want %d", got, want)
	}
	if got, want := (outcome{replies: []reply{{answered: true, ok: true}}}).token(), uint64(1); got != want {
		t.Errorf("token() with no counters = %d; want %d", got, want)
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
