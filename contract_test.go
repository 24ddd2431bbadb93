package redlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The contract breaks a review proved at the seams of the lifecycle: each
// test here failed before its fix.

// A free Mutex asked with a context that has ended is not taken: nobody
// holds it, so the error must not say so.
func TestEndedContextOnAFreeMutexIsNotTaken(t *testing.T) {
	_, clients := servers(t, 3)
	rec := &recorder{}
	c := newClient(t, clients, WithObserver(rec.observer()))
	m := c.NewMutex("free")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for i := range 200 {
		_, err := m.LockContext(ctx)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrNotAcquired) || errors.Is(err, ErrTaken) {
			t.Fatalf("call %d: LockContext with an ended ctx on a free Mutex = %v; want ErrNotAcquired and context.Canceled, not ErrTaken", i, err)
		}
		err = m.Do(ctx, func(context.Context) error { return nil })
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrTaken) {
			t.Fatalf("call %d: Do with an ended ctx on a free Mutex = %v; want context.Canceled, not ErrTaken", i, err)
		}
		if _, err := m.TryLockContext(ctx); !errors.Is(err, context.Canceled) || errors.Is(err, ErrTaken) {
			t.Fatalf("call %d: TryLockContext with an ended ctx on a free Mutex = %v; want context.Canceled, not ErrTaken", i, err)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, e := range rec.notAcquired {
		if errors.Is(e.Err, ErrTaken) {
			t.Fatalf("NotAcquired event says taken: %v", e.Err)
		}
	}
}

// A goroutine of this process that holds the Mutex does make it taken, for
// a context that ends while waiting for it.
func TestContextEndingBehindALocalHolderIsTaken(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients)
	m := c.NewMutex("local")
	m.Lock()
	defer m.Unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if _, err := m.LockContext(ctx); !errors.Is(err, ErrTaken) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("LockContext behind a local holder = %v; want ErrTaken and context.DeadlineExceeded", err)
	}
}

// New names a typed nil client, rather than panic on it.
func TestNewNamesATypedNilClient(t *testing.T) {
	_, clients := servers(t, 2)
	var nilClient *redis.Client
	var nilCluster *redis.ClusterClient
	for _, bad := range []redis.UniversalClient{nilClient, nilCluster} {
		c, err := New([]redis.UniversalClient{clients[0], bad, clients[1]})
		if err == nil || !strings.Contains(err.Error(), "client 1 is nil") {
			t.Errorf("New with a nil %T = %v, %v; want an error naming client 1 as nil", bad, c, err)
		}
	}
}

// A badly configured Mutex names its problem from every call, UnlockContext
// and Unlock included.
func TestBadConfigurationIsNamedByUnlock(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients)
	for _, tt := range []struct {
		name string
		m    *Mutex
		want string
	}{
		{"empty name", c.NewMutex(""), "name is empty"},
		{"brace", c.NewMutex("a{b"), "brace"},
		{"bad TTL", c.NewMutex("ttl", WithTTL(3*time.Millisecond)), "too small"},
	} {
		if err := tt.m.UnlockContext(t.Context()); err == nil || errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: UnlockContext = %v; want the configuration error (%q), not ErrNotHeld", tt.name, err, tt.want)
		}
		func() {
			defer func() {
				msg := fmt.Sprint(recover())
				if !strings.Contains(msg, tt.want) || !strings.HasPrefix(msg, "redlock: ") {
					t.Errorf("%s: Unlock panicked with %q; want a redlock: message naming %q", tt.name, msg, tt.want)
				}
			}()
			tt.m.Unlock()
		}()
	}
}

// Close ends a LockContext that waits for another goroutine of the process
// to release the Mutex, and a Lock too: both end with ErrClosed.
func TestCloseEndsALocalWaiter(t *testing.T) {
	_, clients := servers(t, 3)
	c, err := New(clients, WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	m := c.NewMutex("local")
	m.Lock()
	waited := make(chan error, 1)
	go func() {
		_, err := m.LockContext(context.Background())
		waited <- err
	}()
	locked := make(chan any, 1)
	go func() {
		defer func() { locked <- recover() }()
		m.Lock()
	}()
	time.Sleep(20 * time.Millisecond) // both wait for the local lock
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	for _, wait := range []func() (any, bool){
		func() (any, bool) { err := <-waited; return err, errors.Is(err, ErrClosed) },
		func() (any, bool) {
			p := <-locked
			err, _ := p.(error)
			return p, errors.Is(err, ErrClosed)
		},
	} {
		got := make(chan bool, 1)
		var value any
		go func() { v, ok := wait(); value = v; got <- ok }()
		select {
		case ok := <-got:
			if !ok {
				t.Errorf("a local waiter ended with %v; want ErrClosed", value)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not end a waiter for the local lock within 5s")
		}
	}
	<-closed
	m.Unlock() // the lost lock is not misuse
}

// Acquired comes before Lost even when the maximum hold ends before the
// acquiring call returns.
func TestMaxHoldShorterThanTheAcquisitionLosesAfterAcquired(t *testing.T) {
	_, clients := servers(t, 3)
	var order orderRecorder
	c := newClient(t, clients, WithObserver(order.observer()), WithMaxHold(time.Nanosecond), WithLogger(discard()))
	m := c.NewMutex("short")
	for i := range 3000 {
		held, err := m.LockContext(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		<-held.Done()
		if !errors.Is(context.Cause(held), ErrLockLost) {
			t.Fatalf("cause = %v; want ErrLockLost", context.Cause(held))
		}
		m.Unlock()
		if got := order.take(); !strings.HasPrefix(got, "acquired lost released") {
			t.Fatalf("acquisition %d: events %q; want acquired, lost, released", i, got)
		}
	}
}

// orderRecorder keeps the order of one acquisition's events.
type orderRecorder struct {
	recorder
	events []string
}

func (o *orderRecorder) observer() *Observer {
	add := func(what string) {
		o.mu.Lock()
		o.events = append(o.events, what)
		o.mu.Unlock()
	}
	return &Observer{
		Acquired: func(AcquiredEvent) { add("acquired") },
		Lost:     func(LostEvent) { add("lost") },
		Released: func(ReleasedEvent) { add("released") },
	}
}

func (o *orderRecorder) take() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	got := strings.Join(o.events, " ")
	o.events = nil
	return got
}

// One server under two addresses does not count twice toward a quorum.
func TestOneServerUnderTwoAddressesIsCaught(t *testing.T) {
	mrs, _ := servers(t, 1)
	_, port, _ := net.SplitHostPort(mrs[0].Addr())
	down := closedPort(t)
	var clients []redis.UniversalClient
	for _, addr := range []string{"127.0.0.1:" + port, "localhost:" + port, down} {
		rc := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1})
		t.Cleanup(func() { rc.Close() })
		clients = append(clients, rc)
	}
	c := newClient(t, clients, WithLogger(discard()))
	m := c.NewMutex("twice")
	if _, err := m.TryLockContext(t.Context()); err == nil || !strings.Contains(err.Error(), "same server") {
		t.Fatalf("TryLockContext over one server under two addresses, the third down = %v; want an error naming the same server", err)
	}
	if keysOn(mrs, m.key) != 0 {
		t.Errorf("the lock's key is on the server after the failed attempt")
	}
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// A call refused at the dial never ran: it gets no release, and leaves
// nothing for Close to retry.
func TestRefusedDialLeavesNoLeftover(t *testing.T) {
	_, clients := servers(t, 1)
	for range 2 {
		rc := redis.NewClient(&redis.Options{Addr: closedPort(t), ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1})
		t.Cleanup(func() { rc.Close() })
		clients = append(clients, rc)
	}
	c, err := New(clients, WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	m := c.NewMutex("refused")
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("TryLockContext with 2 of 3 nodes refusing connections = %v; want ErrNoQuorum", err)
	}
	settle(t, c.nodes)
	for _, n := range c.nodes[1:] {
		if got := n.leftovers.count.Load(); got != 0 {
			t.Errorf("node %d, which refused the connection, has %d leftovers; want 0", n.index, got)
		}
	}
	start := time.Now()
	c.Close()
	t.Logf("Close took %v", time.Since(start))
}

// discard is a logger that drops every record.
func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// A wait that both Close and the end of its context end says both.
func TestWaitEndedByCloseAndContextSaysBoth(t *testing.T) {
	_, clients := servers(t, 3)
	c, err := New(clients, WithLogger(discard()))
	if err != nil {
		t.Fatal(err)
	}
	holder := c.NewMutex("both")
	holder.Lock()
	ctx, cancel := context.WithCancel(t.Context())
	w := c.NewMutex("both").newWaiter(ctx, ctx, false)
	cancel()
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	waitFor(t, "Close to begin", c.isClosing)
	if err := w.ended(); !errors.Is(err, ErrClosed) || !errors.Is(err, context.Canceled) || !errors.Is(err, ErrNotAcquired) {
		t.Errorf("ended() with the Client closing and ctx cancelled = %v; want ErrClosed, ErrNotAcquired and context.Canceled", err)
	}
	<-closed
	holder.Unlock()
}

// A grant whose connection broke after it ran, and whose copy sent again
// found the server refusing connections, may have landed: the failed
// attempt releases it. (The lifecycle schedules found this, seed
// 84352064573028: the refused dial of the second copy was taken for the
// whole call's fate.)
func TestGrantThatMayHaveRunBeforeARefusedDialIsReleased(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 5)
	c := newClient(t, clients, WithLogger(discard()))
	warm(t, c)
	m := c.NewMutex("resent")
	mrs[0].Set(m.key, "other")
	mrs[1].Set(m.key, "other")
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	// Nodes 0 and 1 refuse late, so that node 2's grant is sent first.
	for _, h := range hooks[:2] {
		h.add(&fault{match: isKind("acquire"), before: 30 * time.Millisecond, times: 1})
	}
	hooks[2].add(&fault{match: isKind("acquire"), eof: true, times: 1})
	hooks[2].add(&fault{match: isKind("acquire"), fail: refused, times: 1})
	if m.TryLock() {
		t.Fatal("TryLock succeeded on a lock another holder has on 2 of 3 nodes")
	}
	settle(t, c.nodes)
	waitFor(t, "the grant on node 2 to be released", func() bool { return !mrs[2].Exists(m.key) })
}
