package redlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// servers starts n embedded Redis servers and returns clients to them.
func servers(t testing.TB, n int) ([]*miniredis.Miniredis, []redis.UniversalClient) {
	t.Helper()
	var mrs []*miniredis.Miniredis
	var clients []redis.UniversalClient
	for range n {
		mr := miniredis.RunT(t)
		rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
		t.Cleanup(func() { rc.Close() })
		mrs = append(mrs, mr)
		clients = append(clients, rc)
	}
	return mrs, clients
}

func newClient(t *testing.T, clients []redis.UniversalClient, opts ...Option) *Client {
	t.Helper()
	c, err := New(clients, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// settle waits until every call in flight to the nodes has finished, such
// as releases and grants that outlived the rounds that sent them.
func settle(t *testing.T, nodes []*node) {
	t.Helper()
	waitFor(t, "calls in flight to finish", func() bool {
		for _, n := range nodes {
			if n.inFlight.Load() != 0 {
				return false
			}
		}
		return true
	})
}

// keysOn counts the servers that have key.
func keysOn(mrs []*miniredis.Miniredis, key string) int {
	count := 0
	for _, mr := range mrs {
		if mr.Exists(key) {
			count++
		}
	}
	return count
}

func TestLockUnlock(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	m := c.NewMutex("job")
	if got := m.Name(); got != "job" {
		t.Errorf("Name() = %q; want %q", got, "job")
	}
	if until := m.Until(); !until.IsZero() {
		t.Errorf("Until() before Lock = %v; want zero", until)
	}
	before := time.Now()
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatalf("LockContext: %v", err)
	}
	after := time.Now()
	// Validity is measured from the start of the winning round.
	validity := 8*time.Second - 82*time.Millisecond
	if until := m.Until(); until.Before(before.Add(validity)) || until.After(after.Add(validity)) {
		t.Errorf("Until() = %v; want within [%v, %v]", until, before.Add(validity), after.Add(validity))
	}
	if got := keysOn(mrs, "redlock:{job}"); got < 2 {
		t.Errorf("%d of 3 nodes have the key after Lock; want at least 2", got)
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatalf("UnlockContext: %v", err)
	}
	if held.Err() == nil {
		t.Error("held is not done after Unlock")
	}
	if cause := context.Cause(held); errors.Is(cause, ErrLockLost) {
		t.Errorf("Cause(held) after Unlock = %v; want no ErrLockLost", cause)
	}
	if !m.Until().IsZero() {
		t.Errorf("Until() after Unlock = %v; want zero", m.Until())
	}
	// Unlock returns at quorum; the last node's delete may still be in flight.
	waitFor(t, "keys gone after Unlock", func() bool { return keysOn(mrs, "redlock:{job}") == 0 })
	if err := m.UnlockContext(t.Context()); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second UnlockContext = %v; want ErrNotHeld", err)
	}
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUnlockOfUnlockedMutexPanics(t *testing.T) {
	_, clients := servers(t, 1)
	m := newClient(t, clients).NewMutex("x")
	if got, want := panicMessage(m.Unlock), "redlock: unlock of unlocked mutex"; got != want {
		t.Errorf("Unlock of unlocked mutex panicked with %q; want %q", got, want)
	}
}

func TestTryLock(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients)
	m := c.NewMutex("try")
	if !m.TryLock() {
		t.Fatal("TryLock of a free lock = false")
	}
	if m.TryLock() {
		t.Error("TryLock of a lock this Mutex holds = true")
	}
	other := newClient(t, clients).NewMutex("try")
	_, err := other.TryLockContext(t.Context())
	if !errors.Is(err, ErrNotAcquired) {
		t.Errorf("TryLockContext of a lock held elsewhere = %v; want ErrNotAcquired", err)
	}
	m.Unlock()
	if !other.TryLock() {
		t.Error("TryLock after Unlock = false")
	}
	other.Unlock()
}

func TestLockContextDeadlineWhileHeld(t *testing.T) {
	_, clients := servers(t, 3)
	holder := newClient(t, clients).NewMutex("busy")
	holder.Lock()
	defer holder.Unlock()

	m := newClient(t, clients).NewMutex("busy")
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Millisecond)
	defer cancel()
	held, err := m.LockContext(ctx)
	if held != nil || !errors.Is(err, ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockContext = %v, %v; want nil and an error wrapping ErrNotAcquired and DeadlineExceeded", held, err)
	}
	// The local lock must have been given back.
	holder.Unlock()
	if !m.TryLock() {
		t.Error("TryLock after a timed-out LockContext = false; want true")
	}
	m.Unlock()
	holder.Lock()
}

func TestLockContextCancelCauseIsKept(t *testing.T) {
	_, clients := servers(t, 1)
	holder := newClient(t, clients).NewMutex("busy")
	holder.Lock()
	defer holder.Unlock()
	cause := errors.New("shutting down")
	ctx, cancel := context.WithCancelCause(t.Context())
	time.AfterFunc(50*time.Millisecond, func() { cancel(cause) })
	_, err := newClient(t, clients).NewMutex("busy").LockContext(ctx)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, cause) || !errors.Is(err, ErrNotAcquired) {
		t.Errorf("LockContext = %v; want ErrNotAcquired, context.Canceled and the cause", err)
	}
}

func TestWaitTimeoutBoundsOnlyTheWait(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients, WithWaitTimeout(100*time.Millisecond), WithTTL(time.Second))
	holder := c.NewMutex("w")
	held, err := holder.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewMutex("w").LockContext(t.Context()); !errors.Is(err, ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("LockContext of a held lock with a 100ms wait timeout = %v; want ErrNotAcquired and DeadlineExceeded", err)
	}
	// The holder's context outlives the wait timeout and several TTLs.
	select {
	case <-held.Done():
		t.Fatalf("held ended after a wait timeout: %v", context.Cause(held))
	case <-time.After(1500 * time.Millisecond):
	}
	holder.Unlock()
}

func TestParentEndingDoesNotRelease(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients).NewMutex("p")
	ctx, cancel := context.WithCancel(t.Context())
	held, err := m.LockContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	<-held.Done()
	if m.Until().IsZero() {
		t.Error("Until() is zero after the parent ended; want the lock still held")
	}
	if got := keysOn(mrs, "redlock:{p}"); got < 2 {
		t.Errorf("%d nodes have the key after the parent ended; want at least 2", got)
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Errorf("UnlockContext: %v", err)
	}
}

// overlaps records how many holders are inside a critical section at once.
type overlaps struct{ inside, most, sections atomic.Int32 }

// section runs a 1ms critical section under m.
func (o *overlaps) section(m *Mutex) {
	m.Lock()
	n := o.inside.Add(1)
	for {
		most := o.most.Load()
		if n <= most || o.most.CompareAndSwap(most, n) {
			break
		}
	}
	time.Sleep(time.Millisecond)
	o.inside.Add(-1)
	o.sections.Add(1)
	m.Unlock()
}

func (o *overlaps) check(t *testing.T, wantSections int32) {
	t.Helper()
	if got := o.most.Load(); got != 1 {
		t.Errorf("at most %d holders were inside at once; want 1", got)
	}
	if got := o.sections.Load(); got != wantSections {
		t.Errorf("%d critical sections ran; want %d", got, wantSections)
	}
}

func TestGoroutinesSharingAMutexAreSerialised(t *testing.T) {
	_, clients := servers(t, 3)
	m := newClient(t, clients).NewMutex("shared")
	var o overlaps
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				o.section(m)
			}
		})
	}
	wg.Wait()
	o.check(t, 80)
}

func TestClientsExcludeEachOther(t *testing.T) {
	_, clients := servers(t, 3)
	var o overlaps
	var wg sync.WaitGroup
	for range 4 {
		m := newClient(t, clients, WithRetryDelay(time.Millisecond), WithRetryJitter(2*time.Millisecond)).NewMutex("contended")
		wg.Go(func() {
			for range 10 {
				o.section(m)
			}
		})
	}
	wg.Wait()
	o.check(t, 40)
}

func TestWaiterIsWokenByRelease(t *testing.T) {
	mrs, clients := servers(t, 3)
	// Polling alone would take 10s; only the release message can wake the
	// waiter sooner.
	c := newClient(t, clients, WithRetryDelay(10*time.Second), WithRetryJitter(0))
	holder := c.NewMutex("wake")
	holder.Lock()
	waiter := c.NewMutex("wake")
	got := make(chan time.Time, 1)
	go func() {
		waiter.Lock()
		got <- time.Now()
	}()
	// A waiter queues once its subscription is confirmed: from then on,
	// the test is about wake-up.
	waitFor(t, "the waiter to queue", func() bool { return len(queueOf(mrs[0], "wake")) == 1 })
	released := time.Now()
	holder.Unlock()
	select {
	case at := <-got:
		t.Logf("waiter acquired %v after the release", at.Sub(released))
	case <-time.After(5 * time.Second):
		t.Fatal("waiter was not woken within 5s of the release; retry delay is 10s")
	}
	waiter.Unlock()
}

func TestLockPanicsOnPermanentErrors(t *testing.T) {
	mrs, clients := servers(t, 3)
	for _, mr := range mrs {
		mr.RequireAuth("secret")
	}
	m := newClient(t, clients).NewMutex("denied")
	msg := panicMessage(m.Lock)
	if !strings.HasPrefix(msg, "redlock: ") || !strings.Contains(msg, "NOAUTH") {
		t.Errorf("Lock panicked with %q; want a redlock: message naming NOAUTH", msg)
	}
	if _, err := m.LockContext(t.Context()); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("LockContext = %v; want an error naming NOAUTH", err)
	}
}

func TestLockToleratesAMinorityOfBrokenNodes(t *testing.T) {
	mrs, clients := servers(t, 3)
	mrs[0].RequireAuth("secret")
	m := newClient(t, clients).NewMutex("degraded")
	m.Lock() // must not panic: one denied node of three leaves a quorum
	m.Unlock()

	// With a second node down, no quorum is possible, but a down node may
	// come back: LockContext retries until its context ends.
	mrs[1].Close()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err := m.LockContext(ctx)
	var nodeErr *NodeError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &nodeErr) {
		t.Errorf("LockContext with one node denied and one down = %v; want DeadlineExceeded and the node errors", err)
	}
}

func TestLockLostWhenAQuorumSaysTheKeyIsGone(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients, WithTTL(time.Second)).NewMutex("gone")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	until := m.Until()
	// Lock returns at quorum; wait for the third grant, or it could land
	// after the changes below and keep the lock alive.
	waitFor(t, "all grants", func() bool { return keysOn(mrs, "redlock:{gone}") == 3 })
	mrs[0].Del("redlock:{gone}")
	mrs[1].Set("redlock:{gone}", "someone else")
	select {
	case <-held.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("held not cancelled within 5s after a quorum lost the key")
	}
	lostAt := time.Now()
	if cause := context.Cause(held); !errors.Is(cause, ErrLockLost) {
		t.Errorf("Cause(held) = %v; want ErrLockLost", cause)
	}
	if !lostAt.Before(until) {
		t.Errorf("held cancelled at %v; want before the validity deadline %v", lostAt, until)
	}
	if !m.Until().IsZero() {
		t.Errorf("Until() after loss = %v; want zero", m.Until())
	}
	if err := m.UnlockContext(t.Context()); !errors.Is(err, ErrLockLost) {
		t.Errorf("UnlockContext after loss = %v; want ErrLockLost", err)
	}
	// A lost lock is not misuse: Unlock must not panic.
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, "redlock:{gone}") == 3 })
	mrs[0].Del("redlock:{gone}")
	mrs[1].Del("redlock:{gone}")
	mrs[2].Del("redlock:{gone}")
	waitFor(t, "loss", func() bool { return m.Until().IsZero() })
	if msg := panicMessage(m.Unlock); msg != "" {
		t.Errorf("Unlock of a lost lock panicked: %s", msg)
	}
}

func TestLockLostByTheDeadlineWhenNodesFail(t *testing.T) {
	mrs, clients := servers(t, 3)
	ttl := 2 * time.Second
	m := newClient(t, clients, WithTTL(ttl)).NewMutex("failing")
	start := time.Now()
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	until := m.Until()
	extensions := &commandCounter{only: map[string]bool{"evalsha": true, "eval": true}}
	clients[2].AddHook(extensions)
	mrs[0].SetError("LOADING simulated")
	mrs[1].SetError("LOADING simulated")
	<-held.Done()
	lostAt := time.Now()
	// A failed extension is retried a quarter interval later (167ms here),
	// not at once: about 10 rounds in the 2s of validity.
	if got := extensions.count.Load(); got > 20 {
		t.Errorf("%d extension rounds while the extensions failed; want a retry every 167ms, about 10", got)
	}
	if cause := context.Cause(held); !errors.Is(cause, ErrLockLost) {
		t.Errorf("Cause(held) = %v; want ErrLockLost", cause)
	}
	// Keys expire on the nodes at the earliest ttl after the request went
	// out; held must end before then.
	t.Logf("held cancelled %v before the validity deadline, %v before the earliest expiry", until.Sub(lostAt), start.Add(ttl).Sub(lostAt))
	if !lostAt.Before(until) {
		t.Errorf("held cancelled %v after the validity deadline; want by it", lostAt.Sub(until))
	}
	// The watchdog fires half the drift (here 11ms) early; more would cut
	// the validity short.
	if lostAt.Before(until.Add(-22 * time.Millisecond)) {
		t.Errorf("held cancelled %v before the validity deadline; the lock was still valid", until.Sub(lostAt))
	}
	mrs[0].SetError("")
	mrs[1].SetError("")
	m.Unlock()
}

func TestHeldErrSeesTheValidityEndWhenTheTimerIsLate(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients, WithTTL(time.Second)).NewMutex("late timer")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := held.Err(); err != nil {
		t.Fatalf("held.Err() right after Lock = %v; want nil", err)
	}
	// The expiry timer does not fire, as in a process that has just woken
	// from a pause, and no extension succeeds.
	stopExpiryTimer(m)
	mrs[0].SetError("LOADING simulated")
	mrs[1].SetError("LOADING simulated")
	defer mrs[0].SetError("")
	defer mrs[1].SetError("")
	time.Sleep(time.Until(m.Until()) + 10*time.Millisecond)
	if err := held.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("held.Err() after the validity ended = %v; want Canceled", err)
	}
	if cause := context.Cause(held); !errors.Is(cause, ErrLockLost) {
		t.Errorf("Cause(held) = %v; want ErrLockLost", cause)
	}
	select {
	case <-held.Done():
	default:
		t.Error("held.Done() not closed once Err reported the loss")
	}
	m.Unlock()
}

func TestWatchdogKeepsTheLock(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients, WithTTL(300*time.Millisecond)).NewMutex("kept")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	first := m.Until()
	// miniredis's clock moves only when told; move it with real time.
	for range 20 {
		time.Sleep(50 * time.Millisecond)
		for _, mr := range mrs {
			mr.FastForward(50 * time.Millisecond)
		}
	}
	if held.Err() != nil {
		t.Fatalf("held ended after 1s with a 300ms TTL: %v", context.Cause(held))
	}
	if later := m.Until(); !later.After(first.Add(500 * time.Millisecond)) {
		t.Errorf("Until() = %v after 1s; want it moved forward from %v", later, first)
	}
	m.Unlock()
}

func TestWatchdogBatchesExtensions(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithTTL(time.Second))
	const locks = 100
	var mutexes []*Mutex
	var helds []context.Context
	for i := range locks {
		m := c.NewMutex(fmt.Sprintf("batched-%d", i))
		held, err := m.LockContext(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		mutexes = append(mutexes, m)
		helds = append(helds, held)
	}
	// Two extensions each: every lock's validity ends at least two
	// intervals (2×333ms) after the latest acquisition's did.
	target := mutexes[locks-1].Until().Add(2 * c.cfg.extendInterval())
	// Count the commands the Client sends from here on.
	counters := make([]*commandCounter, len(clients))
	for i, rc := range clients {
		counters[i] = &commandCounter{only: map[string]bool{"evalsha": true, "eval": true}}
		rc.AddHook(counters[i])
	}
	waitFor(t, "two extensions of every lock", func() bool {
		for _, m := range mutexes {
			if m.Until().Before(target) {
				return false
			}
		}
		return true
	})
	for i, counter := range counters {
		// One call per batch; without batching it would be 2 per lock.
		if calls := counter.count.Load(); calls > 2*locks/10 {
			t.Errorf("node %d: %d calls to extend %d locks twice; want at most %d", i, calls, locks, 2*locks/10)
		} else {
			t.Logf("node %d: %d calls to extend %d locks twice", i, calls, locks)
		}
	}
	for i, m := range mutexes {
		if helds[i].Err() != nil {
			t.Fatalf("lock %d lost: %v", i, context.Cause(helds[i]))
		}
		if err := m.UnlockContext(t.Context()); err != nil {
			t.Errorf("Unlock %d: %v", i, err)
		}
	}
	settle(t, c.nodes) // Unlock returns at a quorum; the last release may be in flight
	for _, m := range mutexes {
		if n := keysOn(mrs, m.key); n != 0 {
			t.Errorf("%s on %d nodes after Unlock", m.key, n)
		}
	}
}

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

func TestFailedAttemptReleasesItsGrants(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	// Another holder has the lock on nodes 1 and 2 only: node 0 grants our
	// attempt, which then fails and must give node 0 back.
	mrs[1].Set("redlock:{split}", "other")
	mrs[2].Set("redlock:{split}", "other")
	if _, err := c.NewMutex("split").TryLockContext(t.Context()); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryLockContext = %v; want ErrNotAcquired", err)
	}
	settle(t, c.nodes[:1]) // the release runs in the background
	if mrs[0].Exists("redlock:{split}") {
		t.Error("node 0 still holds the key of a failed attempt")
	}
	if got, _ := mrs[1].Get("redlock:{split}"); got != "other" {
		t.Errorf("node 1 key = %q; want the other holder's value untouched", got)
	}
}

// records is a slog handler that keeps the records it gets.
type records struct {
	mu   sync.Mutex
	list []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, rec)
	return nil
}

func TestLockLogsTransientFailures(t *testing.T) {
	mrs, clients := servers(t, 3)
	log := &records{}
	c := newClient(t, clients, WithLogger(slog.New(log)))
	// Node 0 is taken by another holder and node 2 is down, so attempts
	// fail on node 2's error until node 0 frees up.
	mrs[0].Set("redlock:{logged}", "other")
	mrs[2].Close()
	time.AfterFunc(100*time.Millisecond, func() { mrs[0].Del("redlock:{logged}") })
	m := c.NewMutex("logged")
	m.Lock()
	m.Unlock()
	log.mu.Lock()
	defer log.mu.Unlock()
	var warned bool
	for _, rec := range log.list {
		rec.Attrs(func(a slog.Attr) bool {
			if rec.Level == slog.LevelWarn && a.Key == "error" && strings.Contains(a.Value.String(), "node 2") {
				warned = true
			}
			return true
		})
	}
	if !warned {
		t.Errorf("no Warn record named node 2 while it was down; got %d records", len(log.list))
	}
}

// queueOf returns the ids queued for the lock on a server.
func queueOf(mr *miniredis.Miniredis, name string) []string {
	list, _ := mr.List("redlock:{" + name + "}" + queueSuffix)
	return list
}

func TestReleaseWakesWaitersInOrder(t *testing.T) {
	mrs, clients := servers(t, 3)
	// Polling alone would take 10s: only wake-ups by name are fast.
	opts := []Option{WithRetryDelay(10 * time.Second), WithRetryJitter(0)}
	holder := newClient(t, clients, opts...).NewMutex("fifo")
	holder.Lock()
	order := make(chan string, 2)
	waiters := map[string]*Mutex{}
	for i, name := range []string{"first", "second"} {
		m := newClient(t, clients, opts...).NewMutex("fifo")
		waiters[name] = m
		go func() {
			m.Lock()
			order <- name
		}()
		waitFor(t, name+" to queue", func() bool { return len(queueOf(mrs[0], "fifo")) == i+1 })
	}
	holder.Unlock()
	for _, want := range []string{"first", "second"} {
		select {
		case got := <-order:
			if got != want {
				t.Fatalf("%s acquired the lock; want %s, which queued first", got, want)
			}
			waiters[got].Unlock()
		case <-time.After(5 * time.Second):
			t.Fatalf("%s not woken within 5s of the release; polling would take 10s", want)
		}
	}
	// A queue keeps no id forever: an id re-queued by a call that landed
	// late expires with the queue.
	for i, mr := range mrs {
		if q := queueOf(mr, "fifo"); len(q) > 0 && mr.TTL("redlock:{fifo}"+queueSuffix) <= 0 {
			t.Errorf("server %d queue %v has no TTL", i, q)
		}
	}
}

func TestWaiterThatGivesUpLeavesTheQueue(t *testing.T) {
	mrs, clients := servers(t, 3)
	holder := newClient(t, clients).NewMutex("q")
	holder.Lock()
	defer holder.Unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	m := newClient(t, clients).NewMutex("q")
	if _, err := m.LockContext(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockContext = %v; want DeadlineExceeded", err)
	}
	settle(t, m.client.nodes)
	for i, mr := range mrs {
		if q := queueOf(mr, "q"); len(q) != 0 {
			t.Errorf("server %d queue = %v after the waiter gave up; want empty", i, q)
		}
	}
}

func TestWatchdogRepairsANodeThatLostTheKey(t *testing.T) {
	mrs, clients := servers(t, 5)
	m := newClient(t, clients, WithTTL(300*time.Millisecond)).NewMutex("repair")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, "redlock:{repair}") == 5 })
	value, _ := mrs[0].Get("redlock:{repair}")
	mrs[0].Del("redlock:{repair}")          // as if node 0 restarted
	mrs[1].Set("redlock:{repair}", "other") // a key that is not ours: never overwritten
	mrs[1].SetTTL("redlock:{repair}", time.Hour)
	// Nodes 2-4 still make a quorum, so extensions succeed and repair node 0.
	waitFor(t, "node 0 repaired", func() bool {
		got, _ := mrs[0].Get("redlock:{repair}")
		return got == value
	})
	if got, _ := mrs[1].Get("redlock:{repair}"); got != "other" {
		t.Errorf("node 1 key = %q; want the other holder's value untouched", got)
	}
	if ttl := mrs[0].TTL("redlock:{repair}"); ttl <= 0 || ttl > 300*time.Millisecond {
		t.Errorf("repaired key TTL = %v; want within (0, 300ms]", ttl)
	}
	if held.Err() != nil {
		t.Errorf("held ended: %v", context.Cause(held))
	}
	m.Unlock()
	settle(t, m.client.nodes)
	if mrs[0].Exists("redlock:{repair}") {
		t.Error("node 0 still has the key after Unlock")
	}
}

func TestReleaserQueuesBehindTheWaiterItWoke(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithRetryDelay(10 * time.Second), WithRetryJitter(0)}
	releaser := newClient(t, clients, opts...).NewMutex("handoff")
	waiter := newClient(t, clients, opts...).NewMutex("handoff")
	releaser.Lock()
	order := make(chan string, 2)
	go func() {
		waiter.Lock()
		order <- "waiter"
		waiter.Unlock()
	}()
	waitFor(t, "the waiter to queue", func() bool { return len(queueOf(mrs[0], "handoff")) == 1 })
	releaser.Unlock()
	// Locking again at once, the releaser must not take the lock back from
	// the waiter its release woke.
	releaser.Lock()
	order <- "releaser"
	releaser.Unlock()
	if first := <-order; first != "waiter" {
		t.Errorf("%s got the lock first; want the waiter the release woke", first)
	}
}

func TestWaiterHearsAReleaseRightAfterQueueing(t *testing.T) {
	mrs, clients := servers(t, 3)
	// Nobody polls within the test: only a wake-up ends a wait.
	opts := []Option{WithRetryDelay(time.Minute), WithRetryJitter(0)}
	firsts := newClient(t, clients, opts...)
	seconds := newClient(t, clients, opts...)
	// A new lock each time, so that each wait subscribes afresh.
	for i := range 30 {
		name := fmt.Sprintf("fresh-%d", i)
		first, second := firsts.NewMutex(name), seconds.NewMutex(name)
		first.Lock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			second.Lock() // woken by first's release
			second.Unlock()
		}()
		waitFor(t, "the second to queue", func() bool { return len(queueOf(mrs[0], name)) == 1 })
		first.Unlock()
		// Locking again at once, first queues behind second, whose
		// release follows within a few round trips: first must already
		// be able to hear it.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := first.LockContext(ctx)
		cancel()
		if err != nil {
			t.Fatalf("lock %d: a release went unheard: %v", i, err)
		}
		first.Unlock()
		<-done
	}
}

func TestClientSubscribesOnceToItsOwnChannel(t *testing.T) {
	mrs, clients := servers(t, 3)
	holders := newClient(t, clients)
	c := newClient(t, clients)
	// Two waits on two locks: each release wakes the waiter through its
	// Client's channel, which is subscribed once for both.
	for _, name := range []string{"one", "two"} {
		holder := holders.NewMutex(name)
		holder.Lock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			waiter := c.NewMutex(name)
			waiter.Lock()
			waiter.Unlock()
		}()
		waitFor(t, "the waiter to queue", func() bool { return len(queueOf(mrs[0], name)) == 1 })
		holder.Unlock()
		<-done
	}
	for i, mr := range mrs {
		if got, want := mr.PubSubChannels(""), []string{c.notifier.channel}; !slices.Equal(got, want) {
			t.Errorf("node %d: subscribed channels = %v; want only the waiting Client's, %v", i, got, want)
		}
	}
}

// commandCounter is a go-redis hook that counts the commands sent: those
// named in only, if it is not nil.
type commandCounter struct {
	only  map[string]bool
	count atomic.Int64
}

func (c *commandCounter) add(cmd redis.Cmder) {
	if c.only == nil || c.only[cmd.Name()] {
		c.count.Add(1)
	}
}

func (*commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		c.add(cmd)
		return err
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			c.add(cmd)
		}
		return err
	}
}
