package redlock

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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

func TestNodeError(t *testing.T) {
	cause := errors.New("boom")
	joined := errors.Join(&NodeError{Node: 0, Addr: "a:1", Err: cause}, &NodeError{Node: 2, Err: context.DeadlineExceeded})
	err := errors.Join(ErrNotAcquired, joined)
	if !errors.Is(err, cause) || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrNotAcquired) {
		t.Errorf("errors.Is lost a wrapped error in %v", err)
	}
	var nodeErr *NodeError
	if !errors.As(err, &nodeErr) || nodeErr.Node != 0 {
		t.Errorf("errors.As(*NodeError) = %v; want node 0", nodeErr)
	}
	if got, want := nodeErr.Error(), "redlock: node 0 (a:1): boom"; got != want {
		t.Errorf("NodeError.Error() = %q; want %q", got, want)
	}
	if got, want := (&NodeError{Node: 2, Err: cause}).Error(), "redlock: node 2: boom"; got != want {
		t.Errorf("NodeError.Error() = %q; want %q", got, want)
	}
}

func TestPermanent(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{redis.ErrClosed, true},
		{ErrClosed, true},
		{context.DeadlineExceeded, false},
		{errors.New("dial tcp: connection refused"), false},
		{errTooBusy, false},
	}
	for _, tt := range tests {
		if got := permanent(tt.err); got != tt.want {
			t.Errorf("permanent(%v) = %v; want %v", tt.err, got, tt.want)
		}
	}
}

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

func TestFanOutReturnsAtQuorumDespiteAHungNode(t *testing.T) {
	_, clients := servers(t, 2)
	rc, hole := hungClient(t)
	c := newClient(t, append(clients, rc), WithNodeTimeout(time.Second), WithTTL(10*time.Second))
	t.Cleanup(hole.close)
	m := c.NewMutex("hung")
	start := time.Now()
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

func TestCallsToAHungNodeAreBounded(t *testing.T) {
	_, clients := servers(t, 2)
	rc, hole := hungClient(t)
	c := newClient(t, append(clients, rc), WithNodeTimeout(200*time.Millisecond), WithTTL(4*time.Second))
	t.Cleanup(hole.close)
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
	for _, n := range c.nodes[1:] {
		n.lastAnswer.Store(-int64(time.Hour)) // no answer for an hour
		for range maxCallsToHungNode {
			if !n.start(time.Second, func() { <-release }) {
				t.Fatal("could not fill a hung node's call slots")
			}
		}
	}
	defer close(release)
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
	n.answered(nil)
	for i := range 2 * maxCallsToHungNode {
		if !n.start(time.Hour, func() { <-release }) {
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

func TestLateGrantIsUndoneByUnlock(t *testing.T) {
	mrs, clients := servers(t, 3)
	// Node 2's SET arrives 100ms late, after the release that Unlock sends
	// on another connection; without care it would hold the key for a TTL.
	// Without fencing or a restart guard, acquisition is a plain SET ... NX,
	// which go-redis writes with a lower-case "nx" argument.
	proxy := newDelayingProxy(t, mrs[2].Addr(), []byte("\r\nnx\r\n"), 100*time.Millisecond)
	slow := redis.NewClient(&redis.Options{Addr: proxy.listener.Addr().String(), MaxRetries: -1})
	t.Cleanup(func() { slow.Close() })
	sent := &commandCounter{only: map[string]bool{"set": true, "evalsha": true, "eval": true}}
	slow.AddHook(sent)
	c := newClient(t, append(clients[:2], slow), WithNodeTimeout(time.Second))
	m := c.NewMutex("late")
	// Load the release script on the servers, and count from then on.
	warm := c.NewMutex("warm")
	warm.Lock()
	warm.Unlock()
	settle(t, c.nodes)
	sent.count.Store(0)
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	if mrs[2].Exists("redlock:{late}") {
		t.Fatal("the slow node granted before Lock returned; the proxy did not delay it")
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	settle(t, c.nodes[2:3]) // the late SET, and whatever follows it, are done
	if mrs[2].Exists("redlock:{late}") {
		t.Error("the slow node still has the key after Unlock; its late grant was not undone")
	}
	// Unlock leaves the node whose grant is in flight to the acquisition
	// round, which releases it once the grant is answered: the SET and one
	// release, with no second release sent before the grant can land.
	if got := sent.count.Load(); got != 2 {
		t.Errorf("%d commands sent to the slow node; want 2, the SET and one release", got)
	}
}

func TestRoundsDoNotWaitForHungNodes(t *testing.T) {
	mrs, clients := servers(t, 3)
	rc1, hole1 := hungClient(t)
	rc2, hole2 := hungClient(t)
	c := newClient(t, append(clients, rc1, rc2), WithNodeTimeout(300*time.Millisecond))
	t.Cleanup(hole1.close)
	t.Cleanup(hole2.close)
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
