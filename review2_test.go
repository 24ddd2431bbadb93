//go:build review2

// Failing reproductions from the second review of the identity check,
// kept for the fix: go test -tags review2 -run TestReview .

package redlock

import (
	_ "context"
	"errors"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// twinSetup: nodes 0 and 1 are one miniredis (DB 0 and DB 1, two
// addresses), node 2 another. Node 1's first identity check fails once.
func twinSetup(t *testing.T, opts ...Option) (*Client, *miniredis.Miniredis, *miniredis.Miniredis) {
	mr := miniredis.RunT(t)
	other := miniredis.RunT(t)
	port := mr.Port()
	a := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, DB: 0, ContextTimeoutEnabled: true, MaxRetries: -1})
	b := redis.NewClient(&redis.Options{Addr: "localhost:" + port, DB: 1, ContextTimeoutEnabled: true, MaxRetries: -1})
	o := redis.NewClient(&redis.Options{Addr: other.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	hook := newFaultHook(1, 1)
	b.AddHook(hook)
	t.Cleanup(hook.wait)
	for _, rc := range []*redis.Client{a, b, o} {
		t.Cleanup(func() { rc.Close() })
	}
	hook.add(&fault{match: isKind("identify"), fail: errors.New("LOADING Redis is loading the dataset in memory"), times: 1})
	c, err := New([]redis.UniversalClient{a, b, o}, append([]Option{WithLogger(discard())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, mr, other
}

// A restart (here SCRIPT FLUSH, which is what a restart does to the script
// cache) between node 0's check and node 1's lets both nodes of one server
// be verified: one server then counts twice toward a quorum.
func TestReviewRestartVerifiesTwins(t *testing.T) {
	c, mr, other := twinSetup(t)
	m := c.NewMutex("twin")
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.Unlock()
	// Server of nodes 0 and 1 restarts: its script cache is empty.
	flusher := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer flusher.Close()
	if err := flusher.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond) // past id.next (one node timeout)
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.Unlock()
	t.Logf("verified: %v %v %v, identity err: %v", c.nodes[0].verified.Load(), c.nodes[1].verified.Load(), c.nodes[2].verified.Load(), c.identity.err)
	other.Close() // node 2, the only other server, is gone
	_, err := m.TryLockContext(t.Context())
	if err == nil {
		m.Unlock()
		t.Fatalf("TryLockContext succeeded with one physical server of 2 up: nodes 0 and 1 (one redis-server) both counted")
	}
	t.Logf("err = %v", err)
}

// Once the recheck finds the twins, both are unverified at once: the
// release of a lock they granted skips them, and their grants stay.
func TestReviewTwinsFoundWhileHeldLeak(t *testing.T) {
	c, mr, _ := twinSetup(t)
	m := c.NewMutex("twin")
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.Unlock()
	flusher := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer flusher.Close()
	if err := flusher.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.Unlock()
	settle(t, c.nodes)
	// Now all three are verified. Take the lock on every node.
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	key := "redlock:{twin}"
	t.Logf("before: DB0 %v DB1 %v", mr.DB(0).Exists(key), mr.DB(1).Exists(key))
	// A minute passes: the next call starts the recheck.
	c.identity.mu.Lock()
	c.identity.next = time.Time{}
	c.identity.mu.Unlock()
	other := c.NewMutex("other")
	other.TryLockContext(t.Context())
	waitFor(t, "the recheck to find the twins", func() bool {
		c.identity.mu.Lock()
		defer c.identity.mu.Unlock()
		return c.identity.err != nil
	})
	err := m.UnlockContext(t.Context())
	settle(t, c.nodes)
	t.Logf("UnlockContext = %v", err)
	if mr.DB(0).Exists(key) || mr.DB(1).Exists(key) {
		ttl0, ttl1 := mr.DB(0).TTL(key), mr.DB(1).TTL(key)
		t.Fatalf("after Unlock the key is still on S1: DB0 %v (ttl %v), DB1 %v (ttl %v): the nodes that granted it got no release", mr.DB(0).Exists(key), ttl0, mr.DB(1).Exists(key), ttl1)
	}
}

// While any node is unverified (a master down), verified nodes are never
// checked again: twins verified across a restart stay counted for good,
// not for at most a minute.
func TestReviewNoRecheckWhileANodeIsDown(t *testing.T) {
	mr := miniredis.RunT(t)
	s2, s3, s4 := miniredis.RunT(t), miniredis.RunT(t), miniredis.RunT(t)
	port := mr.Port()
	a := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, DB: 0, ContextTimeoutEnabled: true, MaxRetries: -1})
	b := redis.NewClient(&redis.Options{Addr: "localhost:" + port, DB: 1, ContextTimeoutEnabled: true, MaxRetries: -1})
	hook := newFaultHook(1, 1)
	b.AddHook(hook)
	t.Cleanup(hook.wait)
	clients := []redis.UniversalClient{a, b}
	for _, s := range []*miniredis.Miniredis{s2, s3, s4} {
		clients = append(clients, redis.NewClient(&redis.Options{Addr: s.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1}))
	}
	for _, rc := range clients {
		t.Cleanup(func() { rc.Close() })
	}
	s4.Close() // node 4 is down throughout
	hook.add(&fault{match: isKind("identify"), fail: errors.New("LOADING Redis is loading the dataset in memory"), times: 1})
	c, err := New(clients, WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m := c.NewMutex("twin")
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.Unlock()
	flusher := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer flusher.Close()
	if err := flusher.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.Unlock()
	settle(t, c.nodes)
	// Several "minutes" pass, each with a lock call.
	for range 3 {
		c.identity.mu.Lock()
		c.identity.next = time.Time{}
		c.identity.mu.Unlock()
		if _, err := m.TryLockContext(t.Context()); err == nil {
			m.Unlock()
		}
		settle(t, c.nodes)
	}
	t.Logf("verified: %v %v %v %v %v, pending %d, err %v", c.nodes[0].verified.Load(), c.nodes[1].verified.Load(),
		c.nodes[2].verified.Load(), c.nodes[3].verified.Load(), c.nodes[4].verified.Load(), c.identity.pending, c.identity.err)
	s3.Close() // up: S1 (nodes 0 and 1) and S2: 2 of 4 servers
	if _, err := m.TryLockContext(t.Context()); err == nil {
		m.Unlock()
		t.Fatalf("TryLockContext succeeded with 2 of 4 independent masters up (quorum of 5 nodes is 3): S1 counted twice, and 3 rechecks never looked at nodes 0 and 1")
	}
}
