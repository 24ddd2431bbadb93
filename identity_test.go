package redlock

// The identity check: a Client counts only nodes shown to be servers of
// their own. The first versions of these tests came from a review, and each
// failed on the first identity check (a mark key per DB, with a wait for
// every node).

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// One server reached under two addresses and two DB numbers is one server:
// the identity check finds it, whatever the DB.
func TestIdentityCatchesOneServerUnderTwoDBs(t *testing.T) {
	mr := miniredis.RunT(t)
	other := miniredis.RunT(t)
	port := mr.Port()
	a := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, DB: 0, ContextTimeoutEnabled: true, MaxRetries: -1})
	b := redis.NewClient(&redis.Options{Addr: "localhost:" + port, DB: 1, ContextTimeoutEnabled: true, MaxRetries: -1})
	o := redis.NewClient(&redis.Options{Addr: other.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	for _, rc := range []*redis.Client{a, b, o} {
		t.Cleanup(func() { rc.Close() })
	}
	c, err := New([]redis.UniversalClient{a, b, o}, WithLogger(discard()))
	if err != nil {
		t.Logf("New rejected it: %v", err)
		return
	}
	t.Cleanup(func() { c.Close() })
	other.Close() // the only other server is gone: one real server is left
	m := c.NewMutex("twice")
	held, err := m.TryLockContext(t.Context())
	if err == nil {
		defer m.Unlock()
		t.Fatalf("TryLockContext succeeded with one physical server of 2 up (nodes 0 and 1 are the same redis-server, DB 0 and DB 1): held=%v, until=%v", held != nil, m.Until())
	}
	if !strings.Contains(err.Error(), "same server") {
		t.Fatalf("TryLockContext = %v; want an error naming nodes that reach the same server", err)
	}
}

// With one node hung from the start, a TryLockContext whose ctx is shorter
// than the node timeout gets a free lock that a quorum grants at once: the
// identity check does not wait for the slowest node.
func TestIdentityCheckDoesNotWaitForAHungNode(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	c := newFreshClient(t, clients, WithLogger(discard()), WithTTL(10*time.Second), WithNodeTimeout(1*time.Second))
	hooks[2].pause()
	m := c.NewMutex("free")
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := m.TryLockContext(ctx)
	if err != nil {
		t.Fatalf("TryLockContext on a free lock with 2 of 3 nodes answering at once = %v after %v; want success", err, time.Since(start))
	}
	m.Unlock()
	hooks[2].resume()
}

// A node whose identity check failed counts in no round, extensions
// included: when it is the same server as another node, that one server
// must not keep a lock alive on its own.
func TestUnverifiedTwinDoesNotCountInExtensions(t *testing.T) {
	mr := miniredis.RunT(t)
	other := miniredis.RunT(t)
	port := mr.Port()
	a := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, ContextTimeoutEnabled: true, MaxRetries: -1})
	b := redis.NewClient(&redis.Options{Addr: "localhost:" + port, ContextTimeoutEnabled: true, MaxRetries: -1})
	o := redis.NewClient(&redis.Options{Addr: other.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	hook := newFaultHook(1, 1)
	b.AddHook(hook)
	t.Cleanup(hook.wait)
	for _, rc := range []*redis.Client{a, b, o} {
		t.Cleanup(func() { rc.Close() })
	}
	// Node 1's identity check fails once (a transient error): it stays
	// unknown, and the acquisition goes ahead on nodes 0 and 2.
	hook.add(&fault{match: isKind("identify"), fail: errors.New("LOADING Redis is loading the dataset in memory"), times: 1})
	c, err := New([]redis.UniversalClient{a, b, o}, WithLogger(discard()), WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m := c.NewMutex("twin")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer m.UnlockContext(context.Background())
	other.Close() // node 2, the only other server, is gone
	time.Sleep(3 * time.Second)
	if held.Err() == nil {
		t.Fatalf("the lock is still held 3 TTLs after node 2 died, with nodes 0 and 1 on one redis-server: extensions counted that server twice (until %v)", m.Until())
	}
}

// The identity check is bounded by the Mutex's node timeout, not the
// Client's.
func TestIdentityCheckUsesTheMutexsNodeTimeout(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	c := newFreshClient(t, clients, WithLogger(discard())) // TTL 8s: node timeout 500ms
	hooks[2].pause()
	defer hooks[2].resume()
	m := c.NewMutex("quick", WithNodeTimeout(20*time.Millisecond))
	start := time.Now()
	_, err := m.TryLockContext(t.Context())
	took := time.Since(start)
	if err == nil {
		m.Unlock()
	}
	if took > 200*time.Millisecond {
		t.Fatalf("TryLockContext with a 20ms node timeout and 2 of 3 nodes answering at once took %v (err=%v); want about one node timeout", took, err)
	}
}

// The first LockContext does not wait a node timeout for a hung node when a
// quorum grants at once.
func TestFirstLockDoesNotWaitForAHungNode(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	c := newFreshClient(t, clients, WithLogger(discard()), WithTTL(10*time.Second), WithNodeTimeout(time.Second))
	hooks[2].pause()
	defer hooks[2].resume()
	m := c.NewMutex("first")
	start := time.Now()
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	m.Unlock()
	if took > 300*time.Millisecond {
		t.Fatalf("first LockContext on a free lock took %v with 2 of 3 nodes answering at once; the round must not wait for the slowest node", took)
	}
}

// An UnlockContext from another goroutine, racing with a LockContext that
// has just won the lock, neither crashes it nor tells Released before
// Acquired.
func TestUnlockRacingAnAcquisitionKeepsEventsInOrder(t *testing.T) {
	_, clients := servers(t, 3)
	var acquired, released, early atomic.Int64
	obs := &Observer{
		Acquired: func(AcquiredEvent) { acquired.Add(1) },
		Released: func(ReleasedEvent) {
			if released.Add(1) > acquired.Load() {
				early.Add(1)
			}
		},
	}
	c := newFreshClient(t, clients, WithLogger(discard()), WithObserver(obs))
	m := c.NewMutex("race")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			m.UnlockContext(context.Background())
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	var msg string
	for time.Now().Before(deadline) && msg == "" {
		msg = panicMessage(func() { m.LockContext(context.Background()) })
	}
	close(stop)
	<-done
	if msg != "" {
		t.Fatalf("LockContext panicked: %s", msg)
	}
	if n := early.Load(); n > 0 {
		t.Errorf("%d Released events came before their Acquired (%d acquired, %d released)", n, acquired.Load(), released.Load())
	}
}

// A call made while the first identity check is in flight waits for it,
// rather than skip every node: a TryLockContext on a free lock with every
// node healthy succeeds.
func TestCallsDuringTheFirstIdentityCheckWaitForIt(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	for _, h := range hooks {
		// The servers take 100ms to answer the identity check: a slow link.
		h.add(&fault{match: isKind("identify"), before: 100 * time.Millisecond, times: 1})
	}
	c := newFreshClient(t, clients, WithLogger(discard()))
	first := make(chan error, 1)
	go func() {
		m := c.NewMutex("first")
		_, err := m.TryLockContext(context.Background())
		if err == nil {
			m.Unlock()
		}
		first <- err
	}()
	time.Sleep(20 * time.Millisecond)
	m := c.NewMutex("second")
	_, err := m.TryLockContext(t.Context())
	if err == nil {
		m.Unlock()
	}
	if err := <-first; err != nil {
		t.Errorf("first TryLockContext: %v", err)
	}
	if err != nil {
		t.Fatalf("TryLockContext on a free lock, all 3 nodes healthy, during the first call's identity check = %v", err)
	}
}

// Concurrent first TryLocks on a fresh Client over healthy servers all
// succeed.
func TestConcurrentFirstTryLocksSucceed(t *testing.T) {
	_, clients := servers(t, 3)
	c := newFreshClient(t, clients, WithLogger(discard()))
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			m := c.NewMutex(fmt.Sprintf("m%d", i))
			_, err := m.TryLockContext(context.Background())
			if err == nil {
				m.Unlock()
			}
			errs <- err
		}()
	}
	failed := 0
	for range n {
		if err := <-errs; err != nil {
			failed++
			t.Logf("TryLockContext on a free lock: %v", err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d first TryLockContext calls on free locks failed", failed, n)
	}
}

// Two nodes of one server that both passed their first checks (the one
// that would have found the other failed, and a restart emptied the script
// cache) are found by the recheck: both stop counting, the lock they kept
// is lost, and the Client fails for good.
func TestRecheckFindsTwinsBothVerified(t *testing.T) {
	mr := miniredis.RunT(t)
	other := miniredis.RunT(t)
	port := mr.Port()
	a := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, ContextTimeoutEnabled: true, MaxRetries: -1})
	b := redis.NewClient(&redis.Options{Addr: "localhost:" + port, ContextTimeoutEnabled: true, MaxRetries: -1})
	o := redis.NewClient(&redis.Options{Addr: other.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	hb := newFaultHook(1, 1)
	b.AddHook(hb)
	t.Cleanup(hb.wait)
	for _, rc := range []*redis.Client{a, b, o} {
		t.Cleanup(func() { rc.Close() })
	}
	hb.add(&fault{match: isKind("identify"), fail: errors.New("LOADING Redis is loading the dataset in memory"), times: 1})
	c, err := New([]redis.UniversalClient{a, b, o}, WithLogger(discard()), WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m := c.NewMutex("twin")
	if !m.TryLock() { // nodes 0 and 2 verified; node 1 not
		t.Fatal("first TryLock failed")
	}
	m.Unlock()
	// The server restarts, as far as its script cache can tell, and node
	// 1's next check passes: it finds no other fingerprint.
	if err := a.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	c.identity.mu.Lock()
	c.identity.next = time.Time{}
	c.identity.mu.Unlock()
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer m.UnlockContext(context.Background())
	waitFor(t, "node 1 verified by a check that found no other fingerprint", c.nodes[1].verified.Load)
	// The minute-long wait for the recheck, cut short.
	c.identity.mu.Lock()
	c.identity.next = time.Time{}
	c.identity.mu.Unlock()
	if _, err := c.identify(t.Context(), time.Second); err != nil {
		t.Fatalf("identify starting the recheck = %v", err)
	}
	waitFor(t, "the recheck to find the twins", func() bool { return !c.nodes[0].verified.Load() && !c.nodes[1].verified.Load() })
	other.Close()
	select {
	case <-held.Done():
	case <-time.After(3 * time.Second):
		t.Fatalf("the lock is still held 3 TTLs after node 2 died, with nodes 0 and 1 on one server found to be twins (until %v)", m.Until())
	}
	if _, err := c.NewMutex("after").TryLockContext(t.Context()); err == nil || !strings.Contains(err.Error(), "same server") {
		t.Errorf("TryLockContext after the twins were found = %v; want an error naming the same server", err)
	}
}
