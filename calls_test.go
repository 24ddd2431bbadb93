package redlock

import (
	"errors"
	"testing"
	"time"
)

// A SET NX sent again after an EOF does not mistake our own grant
// for a refusal.
func TestResentGrantIsRecognised(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 14)
	c := newClient(t, clients)
	m := c.NewMutex("resent")
	mrs[1].Set(m.key, "other")
	mrs[2].Set(m.key, "other")
	// Node 0 grants, then the connection breaks before the reply; the
	// other nodes answer after it.
	hooks[0].add(&fault{match: isKind("acquire"), eof: true, times: 1})
	hooks[1].add(&fault{match: isKind("acquire"), after: 50 * time.Millisecond, times: 1})
	hooks[2].add(&fault{match: isKind("acquire"), after: 50 * time.Millisecond, times: 1})
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryLockContext = %v; want ErrNotAcquired", err)
	}
	waitFor(t, "node 0 to lose the failed attempt's key", func() bool { return !mrs[0].Exists(m.key) })
}

// A server that lost its script cache (a restart, SCRIPT FLUSH) gets the
// scripts again with EVAL: prepared.run relies on go-redis reporting
// NOSCRIPT as an error with that prefix.
func TestScriptsAreSentAgainWhenTheServerLostThem(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithFencing())
	m := c.NewMutex("flushed")
	m.Lock()
	m.Unlock()
	for _, rc := range clients {
		if err := rc.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatalf("LockContext after SCRIPT FLUSH = %v; want the scripts sent again", err)
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatalf("UnlockContext after SCRIPT FLUSH = %v", err)
	}
	settle(t, c.nodes)
	if n := keysOn(mrs, m.key); n != 0 {
		t.Errorf("%d nodes still have the key", n)
	}
}
