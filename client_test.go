package redlock

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestCloseEndsHeldLocks(t *testing.T) {
	_, clients := servers(t, 3)
	c, err := New(clients)
	if err != nil {
		t.Fatal(err)
	}
	m := c.NewMutex("closing")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if cause := context.Cause(held); !errors.Is(cause, ErrLockLost) || !errors.Is(cause, ErrClosed) {
		t.Errorf("Cause(held) after Close = %v; want ErrLockLost and ErrClosed", cause)
	}
	if err := m.UnlockContext(t.Context()); !errors.Is(err, ErrLockLost) {
		t.Errorf("UnlockContext after Close = %v; want ErrLockLost", err)
	}
	if _, err := m.LockContext(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("LockContext after Close = %v; want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
}

func TestCloseStopsWaiters(t *testing.T) {
	_, clients := servers(t, 1)
	holder := newClient(t, clients).NewMutex("w")
	holder.Lock()
	defer holder.Unlock()
	c, err := New(clients)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.NewMutex("w").LockContext(context.Background())
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("LockContext ended by Close = %v; want ErrClosed", err)
	}
}

func TestNewRejectsBadConfiguration(t *testing.T) {
	_, clients := servers(t, 2)
	sameAddr := redis.NewClient(&redis.Options{Addr: clients[0].(*redis.Client).Options().Addr, DB: 1})
	t.Cleanup(func() { sameAddr.Close() })
	tests := []struct {
		name    string
		clients []redis.UniversalClient
		opts    []Option
		want    string
	}{
		{"no clients", nil, nil, "no Redis clients"},
		{"nil client", []redis.UniversalClient{clients[0], nil}, nil, "client 1 is nil"},
		{"same client twice", []redis.UniversalClient{clients[0], clients[1], clients[0]}, nil, "clients 0 and 2 are the same client"},
		{"same address twice", []redis.UniversalClient{clients[0], sameAddr}, nil, "clients 0 and 1 both use address"},
		{"zero TTL", clients, []Option{WithTTL(0)}, "TTL 0s must be a positive"},
		{"sub-millisecond TTL", clients, []Option{WithTTL(1500 * time.Microsecond)}, "whole number of milliseconds"},
		{"TTL leaves no validity", clients, []Option{WithTTL(3 * time.Millisecond)}, "too small"},
		{"node timeout eats the TTL", clients, []Option{WithTTL(time.Second), WithNodeTimeout(time.Second)}, "too small"},
		{"negative drift", clients, []Option{WithDriftFactor(-0.1)}, "drift factor"},
		{"drift too large", clients, []Option{WithDriftFactor(0.5)}, "drift factor"},
		{"zero node timeout", clients, []Option{WithNodeTimeout(0)}, "node timeout"},
		{"zero watchdog interval", clients, []Option{WithWatchdogInterval(0)}, "watchdog interval 0s must be positive"},
		{"watchdog interval too long", clients, []Option{WithTTL(time.Second), WithWatchdogInterval(600 * time.Millisecond)}, "exceeds half the TTL"},
		{"zero retry delay", clients, []Option{WithRetryDelay(0)}, "retry delay"},
		{"negative jitter", clients, []Option{WithRetryJitter(-1)}, "retry jitter"},
		{"negative wait timeout", clients, []Option{WithWaitTimeout(-time.Second)}, "wait timeout"},
		{"nil logger", clients, []Option{WithLogger(nil)}, "logger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.clients, tt.opts...)
			if err == nil {
				c.Close()
				t.Fatalf("New succeeded; want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "redlock: ") {
				t.Fatalf("New error = %q; want it to start with \"redlock: \" and contain %q", err, tt.want)
			}
		})
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := New([]redis.UniversalClient{nil}, WithTTL(-1), WithRetryDelay(0))
	if err == nil {
		t.Fatal("New succeeded; want an error")
	}
	for _, want := range []string{"client 0 is nil", "TTL", "retry delay"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New error = %q; want it to contain %q", err, want)
		}
	}
}

// Two failover clients (or any clients whose address New cannot
// see) of one server are caught before they count twice.
func TestClientsOfOneServerAreCaughtAtFirstUse(t *testing.T) {
	mrs, clients := servers(t, 2)
	same := redis.NewClient(&redis.Options{Addr: mrs[0].Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { same.Close() })
	// Wrapped, the clients hide their address, as a failover client does.
	c := newClient(t, []redis.UniversalClient{opaque{clients[0]}, clients[1], opaque{same}})
	for range 2 { // found at first use, and kept
		_, err := c.NewMutex("twice").TryLockContext(t.Context())
		if err == nil || !strings.Contains(err.Error(), "same server") {
			t.Errorf("TryLockContext over one server reached twice = %v; want an error naming the same server", err)
		}
	}
}

// opaque hides the type of a client.
type opaque struct{ redis.UniversalClient }

// A lock that its expiry timer loses while Close runs is released, and Close
// waits for that release: a logger that blocks on the "lock lost" record
// holds the loss between its change of state and its release, the window in
// which Close used to return and leave the key.
func TestLockLostDuringCloseIsReleased(t *testing.T) {
	mrs, clients := servers(t, 3)
	gate := &gateHandler{match: "lock lost", entered: make(chan struct{}, 1), open: make(chan struct{})}
	c := newClient(t, clients, WithTTL(2*time.Second), WithLogger(slog.New(gate)))
	m := c.NewMutex("close-race")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	// Extensions fail on a quorum: the expiry timer loses the lock.
	mrs[0].SetError("LOADING simulated")
	mrs[1].SetError("LOADING simulated")
	<-held.Done()
	<-gate.entered // lose() is between "state = lost" and background.Go
	mrs[0].SetError("")
	mrs[1].SetError("")

	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		t.Errorf("Close returned (%v) before the lost lock was released", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(gate.open)
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if n := keysOn(mrs, m.key); n > 0 {
		t.Errorf("%d nodes still hold the key of a lock lost during Close, after Close returned; want 0", n)
	}
	_ = m.UnlockContext(context.Background())
}

// An Unlock that begins just before Close runs is waited for by Close, and
// releases the key. It used to be left with every node answering ErrClosed
// in about one iteration in ten.
func TestUnlockRacingCloseReleases(t *testing.T) {
	if testing.Short() {
		t.Skip("300 rounds of Lock, Unlock and Close")
	}
	mrs, clients := servers(t, 3)
	leaks := 0
	for i := range 300 {
		c, err := New(clients, WithTTL(2*time.Second), WithLogger(slog.New(&records{})))
		if err != nil {
			t.Fatal(err)
		}
		m := c.NewMutex("unlock-close")
		if _, err := m.LockContext(t.Context()); err != nil {
			t.Fatal(err)
		}
		settle(t, c.nodes)
		unlocked := make(chan error, 1)
		go func() { unlocked <- m.UnlockContext(context.Background()) }()
		for m.current.Load() != nil { // Unlock has begun: it took the holding
			runtime.Gosched()
		}
		c.Close()
		uerr := <-unlocked
		if n := keysOn(mrs, m.key); n > 0 {
			leaks++
			if leaks == 1 {
				t.Errorf("iteration %d: Unlock returned %v; %d nodes still hold the key after Unlock and Close both returned", i, uerr, n)
			}
			for _, mr := range mrs {
				mr.Del(m.key)
			}
		}
	}
	t.Logf("%d of 300 iterations leaked the key", leaks)
}

// Close takes a few node timeouts, not one per remembered key, when a node
// that had keys to release again stops answering: the releases stop at the
// first one without an answer.
func TestCloseIsBoundedWithLeftovers(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 7)
	const timeout = 100 * time.Millisecond
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(timeout), WithLogger(slog.New(&records{})))
	warm(t, c)
	other := newClient(t, clients, WithLogger(slog.New(&records{})))
	busy := other.NewMutex("busy")
	busy.Lock()
	defer busy.Unlock()
	m := c.NewMutex("busy")
	hooks[2].pause()
	// A failed attempt leaves a leftover on the paused node: the grant whose
	// reply never came, and the release sent for it, also unanswered. (A
	// grant still waiting for the node when the attempt failed is never
	// sent, and leaves none.)
	const want = 20
	for attempts := 0; c.nodes[2].leftovers.count.Load() < want; attempts++ {
		if attempts == 100 {
			t.Fatalf("%d leftovers after %d failed attempts; want %d", c.nodes[2].leftovers.count.Load(), attempts, want)
		}
		if m.TryLock() {
			t.Fatal("TryLock succeeded on a taken lock")
		}
		time.Sleep(timeout / 10) // grants time out, and are remembered, 100ms after they went out
	}
	// The node thaws, answers one call, then stops answering releases.
	hooks[2].add(&fault{match: isKind("release"), drop: true})
	hooks[2].resume()
	m.TryLock() // node 2 answers: the leftovers are proven and flushed
	start := time.Now()
	c.Close()
	took := time.Since(start)
	t.Logf("Close took %v with node timeout %v and %d leftovers", took, timeout, want)
	if took > 10*timeout {
		t.Errorf("Close took %v, %.0f node timeouts: leftovers are released serially, each waiting the full timeout, twice", took, float64(took)/float64(timeout))
	}
	hooks[2].clear()
}
