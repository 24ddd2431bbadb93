package redlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

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

func TestLockLogsTransientFailures(t *testing.T) {
	mrs, clients := servers(t, 3)
	log := &records{}
	c := newClient(t, clients, WithLogger(slog.New(log)))
	warm(t, c) // the Client's check of its servers is made before node 2 goes
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

// Keys that failed attempts of other contenders left for a moment
// do not make a waiter sleep as if the lock were held.
func TestLeftoverKeysOfFailedAttemptsDoNotStallAWaiter(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithRetryDelay(200*time.Millisecond), WithRetryJitter(0))
	m := c.NewMutex("split")
	// Two contenders each won one node, lost, and are undoing it.
	mrs[0].Set(m.key, "contender-a")
	mrs[1].Set(m.key, "contender-b")
	time.AfterFunc(20*time.Millisecond, func() {
		mrs[0].Del(m.key)
		mrs[1].Del(m.key)
	})
	start := time.Now()
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Queued behind a holder, the waiter would sleep ten retry delays: 2s.
	if waited := time.Since(start); waited > time.Second {
		t.Errorf("acquired %v after the leftover keys went; want about one retry delay (200ms)", waited)
	}
	m.Unlock()
}

// The id of a waiter whose process died does not absorb a wake-up: a
// release skips it, whether it never counted as alive on the server or its
// time as alive has passed, drops it from the live waiters, and wakes the
// next waiter.
func TestDeadWaiterDoesNotAbsorbAWakeUp(t *testing.T) {
	for _, tt := range []struct {
		name  string
		alive time.Duration // how long the dead waiter counts as alive; 0: not at all
	}{
		{"not alive", 0},
		{"time as alive passed", -time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mrs, clients := servers(t, 3)
			opts := []Option{WithRetryDelay(10 * time.Second), WithRetryJitter(0)}
			releaser := newClient(t, clients, opts...)
			holder := releaser.NewMutex("dead")
			holder.Lock()
			// A grant still in flight at Unlock is released without a
			// wake-up, which pops no waiter.
			waitFor(t, "every server to grant", func() bool { return keysOn(mrs, holder.key) == len(mrs) })
			waiter := newClient(t, clients, opts...).NewMutex("dead")
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			got := make(chan error, 1)
			go func() {
				_, err := waiter.LockContext(ctx)
				got <- err
			}()
			waitFor(t, "the waiter to queue", func() bool { return len(queueOf(mrs[0], "dead")) == 1 })
			// A waiter of a process that died is first in the queue. The
			// live waiter polls every 100s: no call of its own drops the
			// dead one's entry before the release.
			const dead = "deadclient.deadwaiter"
			for _, mr := range mrs {
				mr.Lpush(holder.key+queueSuffix, dead)
				if tt.alive != 0 {
					mr.ZAdd(holder.key+aliveSuffix, float64(time.Now().Add(tt.alive).UnixMilli()), dead)
				}
			}
			holder.Unlock()
			select {
			case err := <-got:
				if err != nil {
					t.Fatalf("LockContext = %v; want the lock", err)
				}
			case <-time.After(3 * time.Second):
				cancel()
				<-got
				t.Fatal("the waiter was not woken within 3s of the release; the dead waiter took its wake-up")
			}
			settle(t, releaser.nodes) // Unlock returned at a quorum of releases
			for i, mr := range mrs {
				if alive, _ := mr.ZMembers(holder.key + aliveSuffix); slices.Contains(alive, dead) {
					t.Errorf("live waiters on server %d after the release = %q; want the dead one dropped", i, alive)
				}
			}
			waiter.Unlock()
		})
	}
}

// A waiter that left the queue is not queued again by a late call of its
// own (one sent before it left, which reached a node after). Each of the
// waiters' sets drops its entries whose time has passed when it gets a new
// one, and expires with the queue.
func TestWaiterThatLeftIsNotQueuedAgain(t *testing.T) {
	mrs, clients := servers(t, 1)
	c := newClient(t, clients)
	m := c.NewMutex("gone")
	call := func(id, mode string) {
		t.Helper()
		if rep := m.kind.enqueue(id, mode, m.retry.aliveTTL(), m.retry.queueTTL())(t.Context(), c.nodes[0], nil); rep.err != nil {
			t.Fatalf("enqueue %q: %v", mode, rep.err)
		}
	}
	members := func(suffix string) []string {
		list, _ := mrs[0].ZMembers(m.key + suffix)
		return list
	}
	expired := float64(time.Now().Add(-time.Second).UnixMilli())
	const id, other = "someclient.waiter", "someclient.other"
	call(id, enqueueLast)
	if q := queueOf(mrs[0], "gone"); !slices.Equal(q, []string{id}) {
		t.Fatalf("queue = %q; want %q", q, id)
	}
	call(id, dequeue)
	for _, mode := range []string{enqueueLast, enqueueFirst} {
		call(id, mode)
		if q := queueOf(mrs[0], "gone"); len(q) != 0 {
			t.Errorf("queue after a late call (mode %q) of a waiter that left = %q; want it empty", mode, q)
		}
	}
	if alive := members(aliveSuffix); slices.Contains(alive, id) {
		t.Errorf("live waiters = %q; want the waiter that left not among them", alive)
	}
	if ttl := mrs[0].TTL(m.key + leftSuffix); ttl <= 0 || ttl > m.retry.queueTTL() {
		t.Errorf("TTL of the waiters that left = %v; want in (0, %v]", ttl, m.retry.queueTTL())
	}

	// Once its time out has passed, it may queue again; a dead waiter's
	// entry whose time has passed goes when another waiter is added.
	mrs[0].ZAdd(m.key+leftSuffix, expired, id)
	mrs[0].ZAdd(m.key+aliveSuffix, expired, "deadclient.waiter")
	call(id, enqueueLast)
	if q := queueOf(mrs[0], "gone"); !slices.Equal(q, []string{id}) {
		t.Errorf("queue after the waiter's time out passed = %q; want %q", q, id)
	}
	if alive := members(aliveSuffix); !slices.Equal(alive, []string{id}) {
		t.Errorf("live waiters = %q; want %q, the dead one dropped", alive, id)
	}
	call(other, dequeue)
	if left := members(leftSuffix); !slices.Equal(left, []string{other}) {
		t.Errorf("waiters that left = %q; want %q, the one whose time out passed dropped", left, other)
	}
	for _, suffix := range []string{queueSuffix, aliveSuffix, leftSuffix} {
		if ttl := mrs[0].TTL(m.key + suffix); ttl <= 0 || ttl > m.retry.queueTTL() {
			t.Errorf("TTL of %s = %v; want in (0, %v]", m.key+suffix, ttl, m.retry.queueTTL())
		}
	}
}

// No "retrying" is logged when it is the wait itself that ended.
func TestNoRetryLoggedWhenTheWaitEnds(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 17)
	log := &records{}
	c := newClient(t, clients, WithLogger(slog.New(log)))
	warm(t, c)
	for _, h := range hooks {
		h.add(&fault{match: isKind("acquire"), after: 200 * time.Millisecond})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.NewMutex("ended").LockContext(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockContext = %v; want DeadlineExceeded", err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, rec := range log.list {
		if strings.Contains(rec.Message, "retrying") {
			t.Errorf("logged %q though the wait had ended", rec.Message)
		}
	}
}

// A waiter with tiny retry delays still counts as alive between its polls,
// which take a round to the nodes each: its mark lasts for them (and a mark
// of under a millisecond would be refused by the server).
func TestTinyRetryDelaysStillQueue(t *testing.T) {
	mrs, clients := servers(t, 3)
	holder := newClient(t, clients).NewMutex("tiny")
	holder.Lock()
	defer holder.Unlock()
	m := newClient(t, clients, WithRetryDelay(time.Microsecond), WithRetryJitter(0)).NewMutex("tiny")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.LockContext(ctx)
	}()
	waitFor(t, "the waiter to queue", func() bool { return len(queueOf(mrs[0], "tiny")) == 1 })
	id := queueOf(mrs[0], "tiny")[0]
	alive, err := mrs[0].ZScore(m.key+aliveSuffix, id)
	now := time.Now()
	cancel()
	<-done
	if until := time.UnixMilli(int64(alive)); err != nil || !until.After(now) {
		t.Errorf("a queued waiter counts as alive until %v (%v); want after now, %v", until, err, now)
	}
	if ttl := m.retry.aliveTTL(); ttl < 2*m.cfg.perNodeTimeout() {
		t.Errorf("aliveTTL() = %v; want at least two node timeouts, %v", ttl, 2*m.cfg.perNodeTimeout())
	}
}
