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

// twinSetup makes a Client whose nodes 0 and 1 are one embedded server
// (DB 0 and DB 1, under two addresses), followed by one node on a server
// of its own for each of others. Node 1's first identity command fails
// (a transient error), so that its first check shows nodes 0 and 2 only.
func twinSetup(t *testing.T, others int, opts ...Option) (*Client, *miniredis.Miniredis, []*miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	port := mr.Port()
	clients := []redis.UniversalClient{
		redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, DB: 0, ContextTimeoutEnabled: true, MaxRetries: -1}),
		redis.NewClient(&redis.Options{Addr: "localhost:" + port, DB: 1, ContextTimeoutEnabled: true, MaxRetries: -1}),
	}
	var rest []*miniredis.Miniredis
	for range others {
		s := miniredis.RunT(t)
		rest = append(rest, s)
		clients = append(clients, redis.NewClient(&redis.Options{Addr: s.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1}))
	}
	hook := newFaultHook(1, 1)
	clients[1].AddHook(hook)
	t.Cleanup(hook.wait)
	for _, rc := range clients {
		t.Cleanup(func() { rc.Close() })
	}
	hook.add(&fault{match: isKind("identify"), fail: errors.New("LOADING Redis is loading the dataset in memory"), times: 1})
	c, err := New(clients, append([]Option{WithLogger(discard())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, mr, rest
}

// flushScripts empties mr's script cache, as a restart does.
func flushScripts(t *testing.T, mr *miniredis.Miniredis) {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rc.Close()
	if err := rc.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
}

// dueNow makes the next identity check due at once, as if its interval
// (a node timeout, or a minute) had passed.
func dueNow(c *Client) {
	c.identity.mu.Lock()
	defer c.identity.mu.Unlock()
	c.identity.next = time.Time{}
}

// waitForCheck waits for the identity check in flight, if any.
func waitForCheck(c *Client) {
	c.identity.mu.Lock()
	ck := c.identity.check
	c.identity.mu.Unlock()
	if ck != nil {
		<-ck.done
	}
}

// A restart (here SCRIPT FLUSH, which is what a restart does to the script
// cache) after node 0 was shown, and before its twin node 1 is checked
// again, does not show node 1 too: the next check looks at every node, and
// finds the twins. (From the second review: the check that looked at node
// 1 alone found no other fingerprint, and one server counted twice.)
func TestRestartBetweenChecksDoesNotVerifyTwins(t *testing.T) {
	c, mr, others := twinSetup(t, 1)
	m := c.NewMutex("twin")
	if _, err := m.TryLockContext(t.Context()); err != nil { // nodes 0 and 2 shown
		t.Fatal(err)
	}
	m.Unlock()
	flushScripts(t, mr)
	dueNow(c)
	if _, err := m.TryLockContext(t.Context()); err == nil {
		m.Unlock()
	}
	waitForCheck(c)
	others[0].Close() // node 2, the only other server, is gone
	_, err := m.TryLockContext(t.Context())
	if err == nil {
		m.Unlock()
		t.Fatalf("TryLockContext succeeded with one server of 2 up: nodes 0 and 1 (one server) both counted; verified %v", c.identity.verified())
	}
	if !strings.Contains(err.Error(), "same server") {
		t.Fatalf("TryLockContext = %v; want an error naming nodes that reach the same server", err)
	}
}

// While a node is not verified (a master down throughout), the nodes
// verified already are checked again too: twins are found, whatever the
// restart in between. (From the second review: checks looked only at the
// unverified nodes.)
func TestChecksWhileANodeIsDownLookAtEveryNode(t *testing.T) {
	c, mr, others := twinSetup(t, 3) // nodes 0 and 1 on one server; 2, 3 and 4 apart
	others[2].Close()                // node 4 is down throughout
	m := c.NewMutex("twin")
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.Unlock()
	flushScripts(t, mr)
	for range 3 {
		dueNow(c)
		if _, err := m.TryLockContext(t.Context()); err == nil {
			m.Unlock()
		}
		waitForCheck(c)
	}
	others[1].Close() // up: the twins' server and node 2's, 2 of 4 servers
	if _, err := m.TryLockContext(t.Context()); err == nil {
		m.Unlock()
		t.Fatalf("TryLockContext succeeded with 2 of 4 servers up (a quorum of 5 nodes is 3): the twins' server counted twice; verified %v", c.identity.verified())
	}
}

// Twins found while a lock is held stop counting, and the lock they kept
// is lost; but the release still reaches them: the grant one of them holds
// is deleted. (From the second review: the release skipped every node not
// verified, and the grant stayed until its TTL.)
func TestTwinsFoundWhileHeldAreReleased(t *testing.T) {
	c, mr, others := twinSetup(t, 1, WithTTL(time.Second))
	m := c.NewMutex("twin")
	held, err := m.LockContext(t.Context()) // on nodes 0 and 2
	if err != nil {
		t.Fatal(err)
	}
	key := "redlock:{twin}"
	if !mr.DB(0).Exists(key) {
		t.Fatalf("node 0 (DB 0) has no grant")
	}
	dueNow(c)
	verifyAll(c) // the minute's recheck: it finds nodes 0 and 1
	if isVerified(c, 0) || isVerified(c, 1) {
		t.Fatalf("the recheck left twins verified: %v", c.identity.verified())
	}
	others[0].Close() // node 2 is gone: no quorum of verified nodes is left
	select {
	case <-held.Done():
	case <-time.After(3 * time.Second):
		t.Fatalf("the lock is still held 3 TTLs after node 2 died, with nodes 0 and 1 found to be twins (until %v)", m.Until())
	}
	m.UnlockContext(t.Context())
	settle(t, c.nodes)
	if mr.DB(0).Exists(key) {
		t.Fatalf("after Unlock the grant is still on node 0 (ttl %v): the release skipped it", mr.DB(0).TTL(key))
	}
	if _, err := c.NewMutex("after").TryLockContext(t.Context()); err == nil || !strings.Contains(err.Error(), "same server") {
		t.Errorf("TryLockContext after the twins were found = %v; want an error naming the same server", err)
	}
}

// A node that answers each command within the node timeout, though not
// two in a row, is verified and counts. (From the second review: both
// commands of a check shared one node timeout, and the node was never
// verified.)
func TestSlowNodeIsVerified(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	c := newFreshClient(t, clients, WithLogger(discard()), WithNodeTimeout(500*time.Millisecond))
	hooks[1].add(&fault{after: 300 * time.Millisecond})
	hooks[2].pause()
	defer hooks[2].resume()
	m := c.NewMutex("slow")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := m.LockContext(ctx); err != nil {
		t.Fatalf("LockContext on a free lock, node 0 fast, node 1 answering each command in 300ms (node timeout 500ms), node 2 hung: %v", err)
	}
	t.Logf("LockContext took %v", time.Since(start))
	m.Unlock()
}

// From the third review: a node slower than the others, though well within
// the node timeout, is verified by a later check, and counts when another
// node goes down.
func TestSlowerNodeIsVerifiedByTheNextCheck(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 1)
	c := newFreshClient(t, clients, WithLogger(discard()), WithNodeTimeout(500*time.Millisecond))
	hooks[2].add(&fault{after: 150 * time.Millisecond})
	m := c.NewMutex("slow")
	for range 4 {
		dueNow(c)
		if _, err := m.TryLockContext(t.Context()); err == nil {
			m.Unlock()
		}
		waitForCheck(c)
	}
	t.Logf("verified after 4 checks: %v", c.identity.verified())
	mrs[1].Close() // one master of three down; node 2 answers in 150ms < 500ms
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatalf("TryLockContext with node 1 down and node 2 answering in 150ms (node timeout 500ms) = %v", err)
	}
	m.Unlock()
}

// From the third review: the first TryLockContext of a fresh Client gets a
// free lock from nodes that answer within the node timeout, one node hung.
func TestFirstTryLockWithOneNodeHungSucceeds(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	hooks[1].add(&fault{after: 100 * time.Millisecond})
	hooks[2].pause()
	defer hooks[2].resume()
	timeout := 500 * time.Millisecond
	c := newFreshClient(t, clients, WithLogger(discard()), WithNodeTimeout(timeout))
	m := c.NewMutex("free")
	start := time.Now()
	_, err := m.TryLockContext(t.Context())
	took := time.Since(start)
	if err != nil {
		t.Fatalf("first TryLockContext on a free lock, nodes 0 and 1 answering within 100ms of a 500ms node timeout, after %v: %v", took, err)
	}
	m.Unlock()
	if took > 2*timeout+timeout/5 {
		t.Fatalf("first TryLockContext took %v; want at most two node timeouts (%v)", took, 2*timeout)
	}
}

// From the third review: the first TryLockContext of a fresh Client whose
// nodes all answer in 200ms of a 500ms node timeout gets a free lock.
func TestFirstTryLockOnSlowHealthyNodesSucceeds(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	for _, h := range hooks {
		h.add(&fault{after: 200 * time.Millisecond})
	}
	timeout := 500 * time.Millisecond
	c := newFreshClient(t, clients, WithLogger(discard()), WithNodeTimeout(timeout))
	m := c.NewMutex("healthy")
	start := time.Now()
	_, err := m.TryLockContext(t.Context())
	took := time.Since(start)
	if err != nil {
		t.Fatalf("first TryLockContext, every node answering in 200ms of a 500ms node timeout, free lock, after %v: %v", took, err)
	}
	m.Unlock()
	if took > 2*timeout+timeout/5 {
		t.Fatalf("first TryLockContext took %v; want at most two node timeouts (%v)", took, 2*timeout)
	}
}

// A check in a hurry that some nodes could not answer (they refuse
// connections) does not make the next check due at once: only nodes the
// grace cut off are checked again without a wait. (From a review: with a
// majority down, every call started a check of its own, and waited for it.)
func TestChecksWithAMajorityDownAreSpaced(t *testing.T) {
	mrs, clients := servers(t, 3)
	mrs[1].Close()
	mrs[2].Close()
	c := newFreshClient(t, clients, WithLogger(discard()), WithNodeTimeout(500*time.Millisecond))
	if _, err := c.NewMutex("down").TryLockContext(t.Context()); err == nil {
		t.Fatal("TryLockContext succeeded with 2 of 3 masters down")
	}
	waitForCheck(c)
	c.identity.mu.Lock()
	next := c.identity.next
	c.identity.mu.Unlock()
	if !next.After(time.Now()) {
		t.Fatalf("after a check with 2 of 3 nodes refusing, the next check is due at once (next %v): every call would start one", next)
	}
}
