package redlock

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// blackHole is a TCP server on loopback that accepts connections and never
// answers, like a frozen Redis.
type blackHole struct {
	listener net.Listener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
	once     sync.Once
}

func newBlackHole(t *testing.T) *blackHole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackHole{listener: ln}
	b.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, conn)
			b.mu.Unlock()
			b.wg.Go(func() { io.Copy(io.Discard, conn) })
		}
	})
	t.Cleanup(b.close)
	return b
}

func (b *blackHole) addr() string { return b.listener.Addr().String() }

// close ends every connection, so calls in flight fail at once.
func (b *blackHole) close() {
	b.once.Do(func() {
		b.listener.Close()
		b.mu.Lock()
		for _, conn := range b.conns {
			conn.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
}

// hungClient returns a client to a black hole with go-redis's defaults, under
// which context deadlines do not bound socket reads.
// Its read timeout is 30s, and its pool is larger than maxCallsToHungNode so that
// calls pile up on sockets rather than wait for a connection. Tests register
// hole.close after making their Client, so that it runs before Client.Close
// and ends the calls in flight instead of leaving Close to wait 30s.
func hungClient(t *testing.T) (redis.UniversalClient, *blackHole) {
	t.Helper()
	hole := newBlackHole(t)
	rc := redis.NewClient(&redis.Options{Addr: hole.addr(), ReadTimeout: 30 * time.Second, MaxRetries: -1, PoolSize: 2 * maxCallsToHungNode})
	t.Cleanup(func() { rc.Close() })
	return rc, hole
}

func TestCallsToAHungNodeAreBounded(t *testing.T) {
	_, clients := servers(t, 2)
	rc, hole := hungClient(t)
	c := newClient(t, append(clients, rc), WithNodeTimeout(200*time.Millisecond), WithTTL(4*time.Second))
	t.Cleanup(hole.close)
	assumeVerified(c, 2)
	m := c.NewMutex("bounded")
	// The bound holds once the node has not answered for a node timeout;
	// say it last answered long ago, so that a fast loop is bounded too.
	c.nodes[2].lastAnswer.Store(int64(time.Since(epoch) - time.Hour))
	baseline := runtime.NumGoroutine()
	// Each Lock and Unlock leaves a call to the hung node behind.
	for i := range 2 * maxCallsToHungNode {
		if _, err := m.LockContext(t.Context()); err != nil {
			t.Fatalf("LockContext %d: %v", i, err)
		}
		if err := m.UnlockContext(t.Context()); err != nil {
			t.Fatalf("UnlockContext %d: %v", i, err)
		}
	}
	// A call in flight costs its own goroutine and, in go-redis, one per
	// open connection.
	if extra, limit := runtime.NumGoroutine()-baseline, 2*maxCallsToHungNode+20; extra > limit {
		t.Errorf("%d more goroutines after %d rounds with a hung node; want at most %d", extra, 4*maxCallsToHungNode, limit)
	}
	if got := c.nodes[2].inFlight.Load(); got != maxCallsToHungNode {
		t.Errorf("%d calls in flight to the hung node; want the bound, %d", got, maxCallsToHungNode)
	}
}

func TestSaturatedNodeFailsFast(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients, WithNodeTimeout(time.Second))
	release := make(chan struct{})
	defer close(release) // before any Fatal: Close waits for the calls
	for _, n := range c.nodes[1:] {
		n.lastAnswer.Store(-int64(time.Hour)) // no answer for an hour
		// Fill its call slots; a call of the Client's own (its identity
		// check) may hold one already.
		for range maxCallsToHungNode {
			if !n.spawn(time.Second, func() { <-release }) {
				break
			}
		}
		if n.spawn(time.Second, func() { <-release }) {
			t.Fatalf("node %d took a call past its %d slots for a hung node", n.index, maxCallsToHungNode)
		}
	}
	start := time.Now()
	_, err := c.NewMutex("busy").TryLockContext(t.Context())
	if elapsed := time.Since(start); elapsed > 500*time.Millisecond {
		t.Errorf("TryLockContext took %v with two saturated nodes; want it to fail at once, not after the 1s node timeout", elapsed)
	}
	if !errors.Is(err, ErrNotAcquired) || !errors.Is(err, errTooBusy) {
		t.Errorf("TryLockContext = %v; want ErrNotAcquired and the too-busy node error", err)
	}
}

func TestBusyHealthyNodeIsNotBounded(t *testing.T) {
	_, clients := servers(t, 1)
	c := newClient(t, clients)
	n := c.nodes[0]
	release := make(chan struct{})
	defer close(release)
	// Thousands of locks extended at once keep many calls in flight to a
	// node that answers: only a hung node is held to the small bound.
	n.answered(nil, time.Now())
	for i := range 2 * maxCallsToHungNode {
		if !n.spawn(time.Hour, func() { <-release }) {
			t.Fatalf("call %d to a healthy node refused; want up to %d", i, maxCallsPerNode)
		}
	}
}

// delayingProxy forwards TCP traffic to a server on loopback, holding back
// each client chunk that contains match for delay. It lets a test make one
// command arrive after a later one sent on another connection.
type delayingProxy struct {
	listener net.Listener
	wg       sync.WaitGroup
}

func newDelayingProxy(t *testing.T, upstream string, match []byte, delay time.Duration) *delayingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &delayingProxy{listener: ln}
	var mu sync.Mutex
	var conns []net.Conn
	p.wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", upstream)
			if err != nil {
				client.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, client, server)
			mu.Unlock()
			p.wg.Go(func() { io.Copy(client, server) })
			p.wg.Go(func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := client.Read(buf)
					if err != nil {
						return
					}
					if bytes.Contains(buf[:n], match) {
						time.Sleep(delay)
					}
					if _, err := server.Write(buf[:n]); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, conn := range conns {
			conn.Close()
		}
		mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// A remembered key is released again only once the node has answered
// since: a timeout proves nothing, an answer does, and a release that fails
// keeps it remembered.
func TestLeftoversWaitForAnAnswer(t *testing.T) {
	mrs, clients := servers(t, 1)
	c := newClient(t, clients)
	m := c.NewMutex("left")
	n := c.nodes[0]
	mrs[0].Set(m.key, "stale")
	n.remember(m.kind.forgetting(), "stale", time.Second)
	n.answered(context.DeadlineExceeded, time.Now())
	settle(t, c.nodes)
	if !mrs[0].Exists(m.key) {
		t.Fatal("a timeout counted as the node's answer")
	}
	mrs[0].SetError("LOADING simulated")
	n.answered(redis.Nil, time.Now()) // a reply proves the server is reading
	settle(t, c.nodes)
	if got := n.leftovers.count.Load(); got != 1 {
		t.Fatalf("%d leftovers after a failed release; want 1, still remembered", got)
	}
	mrs[0].SetError("")
	n.answered(nil, time.Now())
	waitFor(t, "the leftover to be released", func() bool { return !mrs[0].Exists(m.key) && n.leftovers.count.Load() == 0 })
}

// A leftover proven while a flush runs is released when that flush ends,
// without waiting for the node's next answer.
func TestLeftoverProvenDuringAFlushIsReleased(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 15)
	c := newClient(t, clients, WithTTL(10*time.Second), WithNodeTimeout(2*time.Second), WithLogger(slog.New(&records{})))
	warm(t, c)
	for _, n := range c.nodes {
		if err := forgetScript.Load(t.Context(), n.client).Err(); err != nil {
			t.Fatal(err)
		}
	}
	cycle := func(name string) *Mutex {
		m := c.NewMutex(name)
		m.Lock()
		// Lock returns at a quorum; a grant not yet sent when Unlock
		// begins is never sent, and leaves nothing to release.
		waitFor(t, "every grant", func() bool { return keysOn(mrs, m.key) == 3 })
		m.Unlock()
		return m
	}
	failRelease := func(name string) {
		key := c.NewMutex(name).key
		hooks[0].add(&fault{match: func(c call) bool { return c.kind == "release" && c.key == key }, fail: io.ErrClosedPipe, times: 1})
	}
	// L1: m1's release fails on node 0 without running.
	failRelease("left-1")
	m1 := cycle("left-1")
	settle(t, c.nodes)
	if !mrs[0].Exists(m1.key) || c.nodes[0].leftovers.count.Load() != 1 {
		t.Fatal("setup: no leftover on node 0")
	}
	// The forget call that releases L1 runs, but its reply takes 1.5s: the
	// flush lasts that long, well within the 2s node timeout.
	isForget := isKind("forget")
	hooks[0].add(&fault{match: isForget, after: 1500 * time.Millisecond, times: 1})
	cycle("left-2") // node 0 answers: L1 is proven, a flush starts
	waitFor(t, "the forget call", func() bool { return len(hooks[0].sent(isForget)) == 1 })
	// L2: m3's release fails on node 0 while the flush runs; node 0 then
	// answers m4's calls, which proves L2.
	failRelease("left-3")
	m3 := cycle("left-3")
	cycle("left-4")
	if len(hooks[0].sent(isForget)) != 1 || !mrs[0].Exists(m3.key) {
		t.Fatal("setup: the flush ended too early")
	}
	// The flush ends after 1.5s; nothing else is sent. Give it 3s more.
	deadline := time.Now().Add(4500 * time.Millisecond)
	for mrs[0].Exists(m3.key) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if mrs[0].Exists(m3.key) {
		l := &c.nodes[0].leftovers
		l.mu.Lock()
		proven := 0
		for _, o := range l.list {
			if !o.proof.IsZero() {
				proven++
			}
		}
		l.mu.Unlock()
		t.Errorf("node 0 still has %s (TTL %v; miniredis time does not run) 3s after the flush ended: %d leftovers remembered, %d of them proven, none being released; forget calls sent: %d",
			m3.key, mrs[0].TTL(m3.key), l.count.Load(), proven, len(hooks[0].sent(isForget)))
	}
}

// A reply that the node sent before it froze, and that arrives late, proves
// nothing about the commands sent to it since: only the answer to a command
// sent after a leftover was remembered shows that the node has run the
// commands sent before. (Found by the third review.)
func TestLateReplyToAnEarlierCommandIsNoProof(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 41)
	c := newClient(t, clients, WithTTL(10*time.Second), WithNodeTimeout(300*time.Millisecond))
	warm(t, c)
	for _, n := range c.nodes {
		if err := forgetScript.Load(t.Context(), n.client).Err(); err != nil {
			t.Fatal(err)
		}
	}
	a := c.NewMutex("a")
	// Another owner holds a on nodes 1 and 2: a's attempt fails at once,
	// with its grant to node 0 in flight.
	for _, mr := range mrs[1:] {
		mr.Set(a.key, "another-owner")
	}
	// b's grant runs on node 0 at once; its reply takes 1.5s, within b's 3s
	// node timeout.
	b := c.NewMutex("b", WithTTL(30*time.Second), WithNodeTimeout(3*time.Second))
	hooks[0].add(&fault{match: func(c call) bool { return c.kind == "acquire" && c.key == b.key }, after: 1500 * time.Millisecond, times: 1})
	if _, err := b.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b's grant to run on node 0", func() bool { return mrs[0].Exists(b.key) })
	hooks[0].pause() // node 0 freezes, with b's reply on its way
	if _, err := a.TryLockContext(t.Context()); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("a's attempt: %v; want ErrNotAcquired", err)
	}
	// a's grant and then its release get no answer (300ms each): a's value
	// is remembered on node 0. b's reply then arrives (1.5s).
	waitFor(t, "a's value remembered", func() bool { return c.nodes[0].leftovers.count.Load() == 1 })
	isB := func(c call) bool { return c.kind == "acquire" && c.key == b.key }
	waitFor(t, "b's late reply", func() bool { return hooks[0].sent(isB)[0].result != "" })
	time.Sleep(50 * time.Millisecond) // for a forget call to be sent, if one would be
	isForget := isKind("forget")
	if sent := hooks[0].sent(isForget); len(sent) > 0 {
		t.Errorf("a forget call was sent to the frozen node on the strength of a reply sent before it froze: %v", sent[0].values)
	}
	// Node 0 thaws and runs what it was sent while frozen with the grant
	// last: a thawed server reads its sockets in any order.
	hooks[0].resumeOrdered(func(batch []*queued) {
		last := func(q *queued) int {
			if q.kind == "acquire" {
				return 1
			}
			return 0
		}
		slices.SortStableFunc(batch, func(x, y *queued) int { return last(x) - last(y) })
	})
	// Node 0 answers later calls; the leftover must be released.
	b.Unlock()
	other := c.NewMutex("other")
	other.Lock()
	other.Unlock()
	waitFor(t, "a's key released on node 0", func() bool { return !mrs[0].Exists(a.key) })
}
