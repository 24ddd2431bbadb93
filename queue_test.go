package redlock

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// A waiter's place in the queue, for each kind of lock: a holder is not a
// waiter, and a wake-up is never absorbed by a holder or by a waiter that
// gives up.

// queued is one kind's lock as the queue tests use it: how to acquire it
// and how to count its waiters, over a Client of the test's.
type queuedLock struct {
	queue    string // the queue's key
	key      func(mrs []*miniredis.Miniredis) string
	acquire  func(ctx context.Context) (release func(), err error)
	waiters  func(ctx context.Context) (int, error)
	listener *Client
}

// queuedKinds makes, for each kind, a lock called name on a Client over
// clients with opts.
var queuedKinds = map[string]func(t *testing.T, clients []redis.UniversalClient, name string, opts ...Option) queuedLock{
	"mutex": func(t *testing.T, clients []redis.UniversalClient, name string, opts ...Option) queuedLock {
		c := newClient(t, clients, opts...)
		m := c.NewMutex(name)
		return queuedLock{
			queue: m.key + queueSuffix,
			key:   func([]*miniredis.Miniredis) string { return m.key },
			acquire: func(ctx context.Context) (func(), error) {
				_, err := m.LockContext(ctx)
				return m.Unlock, err
			},
			waiters: func(ctx context.Context) (int, error) {
				st, err := m.Status(ctx)
				return st.Waiters, err
			},
			listener: c,
		}
	},
	"semaphore": func(t *testing.T, clients []redis.UniversalClient, name string, opts ...Option) queuedLock {
		c := newClient(t, clients, opts...)
		s := c.NewSemaphore(name, 1)
		return queuedLock{
			queue: s.keys.queueKeys[0].(string),
			key:   func([]*miniredis.Miniredis) string { return s.keys.slots[0] },
			acquire: func(ctx context.Context) (func(), error) {
				p, err := s.Acquire(ctx)
				if err != nil {
					return nil, err
				}
				return func() { p.Release(context.Background()) }, nil
			},
			waiters: func(ctx context.Context) (int, error) {
				st, err := s.Status(ctx)
				return st.Waiters, err
			},
			listener: c,
		}
	},
}

// queuedOn reports whether a waiter of c is in the queue on mr.
func queuedOn(mr *miniredis.Miniredis, queue string, c *Client) bool {
	l, _ := mr.List(queue)
	for _, id := range l {
		if strings.HasPrefix(id, c.notifier.id+waiterSeparator) {
			return true
		}
	}
	return false
}

// A waiter that gets the lock by polling, not by a wake-up (whose release
// takes it out of the queue), leaves the queue: Status does not count it as
// a waiter.
func TestHolderThatPolledIsNotAWaiter(t *testing.T) {
	for kind, newLock := range queuedKinds {
		t.Run(kind, func(t *testing.T) {
			mrs, clients := servers(t, 3)
			holder := newLock(t, clients, "polled")
			if _, err := holder.acquire(t.Context()); err != nil {
				t.Fatal(err)
			}
			w := newLock(t, clients, "polled", WithRetryDelay(50*time.Millisecond), WithRetryJitter(0))
			got := async(func() error { _, err := w.acquire(t.Context()); return err })
			waitFor(t, "the waiter to queue", func() bool { return queuedOn(mrs[0], w.queue, w.listener) })
			settle(t, holder.listener.nodes)
			// The holder's process dies: its key expires (here: is
			// deleted) with no release to wake anyone.
			key := holder.key(mrs)
			for _, mr := range mrs {
				mr.Del(key)
			}
			select {
			case err := <-got:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the waiter did not take the freed lock by polling")
			}
			n, err := w.waiters(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				l, _ := mrs[0].List(w.queue)
				t.Errorf("Status counts %d waiters once the only waiter holds the lock; want 0 (queue on node 0: %v)", n, l)
			}
		})
	}
}

// async runs fn in a goroutine and returns the channel of its result.
func async(fn func() error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	return done
}

// A waiter that a release woke, and whose context ends during the attempt
// the wake-up began, passes the wake-up on: the waiter behind it is woken,
// not left to its next poll, many seconds away.
func TestWokenWaiterThatGivesUpPassesTheWakeUpOn(t *testing.T) {
	for kind, newLock := range queuedKinds {
		t.Run(kind, func(t *testing.T) {
			q := queueTwoWaiters(t, newLock, "giveup", 0)
			// w1's next attempt is answered only after it gives up.
			for _, h := range q.hooks {
				h.add(&fault{match: isKind("acquire"), fail: errors.New("slow"), before: time.Second})
			}
			attempts := len(q.hooks[0].sent(isKind("acquire")))
			q.release() // wakes w1
			waitFor(t, "w1's attempt", func() bool { return len(q.hooks[0].sent(isKind("acquire"))) > attempts })
			q.w1GivesUp(t)
			q.expectW2Woken(t, "w1 gave up its wake-up")
		})
	}
}

// A Semaphore's holder that got its permit by polling is out of the queue,
// so that another holder's release wakes the live waiter behind it, not the
// holder.
func TestSemaphoreHolderDoesNotAbsorbAWakeUp(t *testing.T) {
	mrs, clients := servers(t, 3)
	holder := newClient(t, clients).NewSemaphore("absorb", 2)
	held := holdAll(t, holder)
	w1c := newClient(t, clients, WithRetryDelay(100*time.Millisecond), WithRetryJitter(0))
	w1 := w1c.NewSemaphore("absorb", 2)
	got1 := acquireAsync(t, w1)
	queue := holder.keys.queueKeys[0].(string)
	waitFor(t, "w1 to queue", func() bool { return queuedOn(mrs[0], queue, w1c) })
	settle(t, holder.client.nodes)
	expirePermit(mrs, holder, held[0]) // its process died
	var q1 *Permit
	select {
	case q1 = <-got1:
	case <-time.After(5 * time.Second):
		t.Fatal("w1 did not take the freed permit by polling")
	}
	defer q1.Release(t.Context())
	w2 := queueSlowPoller(t, clients, mrs, "absorb", 2)
	if err := held[1].Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	w2.expectWoken(t, "a release that freed a permit")
}

// An Acquire right after a release that woke a waiter queues behind the
// woken one; when it then wins a permit at once, it leaves the queue.
func TestSemaphoreAcquireBehindAWokenWaiterLeavesTheQueue(t *testing.T) {
	mrs, clients := servers(t, 3)
	s := newClient(t, clients).NewSemaphore("behind", 2)
	held := holdAll(t, s)
	wc := newClient(t, clients, WithRetryDelay(50*time.Millisecond), WithRetryJitter(0))
	w := wc.NewSemaphore("behind", 2)
	got := acquireAsync(t, w)
	queue := s.keys.queueKeys[0].(string)
	waitFor(t, "the waiter to queue", func() bool { return queuedOn(mrs[0], queue, wc) })
	if err := held[0].Release(t.Context()); err != nil { // wakes w
		t.Fatal(err)
	}
	if !s.queued.Load() {
		t.Fatal("the release did not report that it woke a waiter")
	}
	if err := (<-got).Release(t.Context()); err != nil { // nobody waits now
		t.Fatal(err)
	}
	settle(t, s.client.nodes)
	p, err := s.Acquire(t.Context()) // queues behind the woken waiter, then wins
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(t.Context())
	defer held[1].Release(t.Context())
	st, err := s.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := (SemaphoreStatus{Permits: 2, Held: 2, Waiters: 0}); st != want {
		l, _ := mrs[0].List(queue)
		t.Errorf("Status() = %+v with nobody waiting; want %+v (queue on node 0: %v)", st, want, l)
	}
}

// holdAll acquires every permit of s.
func holdAll(t *testing.T, s *Semaphore) []*Permit {
	t.Helper()
	var held []*Permit
	for range s.Permits() {
		p, err := s.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	return held
}

// twoWaiters is a holder of a lock and two waiters queued behind it, w1
// first: w1 reaches the servers through fault layers of its own, hooks,
// and hears its wake-ups w1SubDelay late (if positive); both poll only
// every 20s, so that a waiter woken within seconds was woken by name.
type twoWaiters struct {
	release func()  // the holder's
	holder  *Client // the holder's
	hooks   []*faultHook
	cancel1 func() // ends w1's wait
	gave    <-chan error
	got2    <-chan error
	cancel2 func()
	// release2 is w2's, once got2 has told nil.
	release2 func()
}

func queueTwoWaiters(t *testing.T, newLock func(*testing.T, []redis.UniversalClient, string, ...Option) queuedLock, name string, w1SubDelay time.Duration, w1opts ...Option) *twoWaiters {
	t.Helper()
	mrs, clients := servers(t, 3)
	holder := newLock(t, clients, name)
	q := &twoWaiters{holder: holder.listener}
	var err error
	if q.release, err = holder.acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	own, hooks := hookedClientsHearingLate(t, mrs, w1SubDelay)
	q.hooks = hooks
	opts := []Option{WithRetryDelay(2 * time.Second), WithRetryJitter(0)}
	w1 := newLock(t, own, name, append(opts, w1opts...)...)
	w2 := newLock(t, clients, name, opts...)
	ctx1, cancel1 := context.WithCancel(t.Context())
	t.Cleanup(cancel1)
	q.cancel1 = cancel1
	q.gave = async(func() error {
		release, err := w1.acquire(ctx1)
		if err == nil {
			release()
		}
		return err
	})
	waitFor(t, "w1 to queue", func() bool { return queuedOn(mrs[0], w1.queue, w1.listener) })
	ctx2, cancel2 := context.WithCancel(t.Context())
	t.Cleanup(cancel2)
	q.cancel2 = cancel2
	q.got2 = async(func() (err error) { q.release2, err = w2.acquire(ctx2); return err })
	waitFor(t, "w2 to queue", func() bool { return queuedOn(mrs[0], w2.queue, w2.listener) })
	return q
}

// w1GivesUp ends w1's wait and checks that it did not acquire.
func (q *twoWaiters) w1GivesUp(t *testing.T) {
	t.Helper()
	q.cancel1()
	if err := <-q.gave; err == nil {
		t.Fatal("w1 acquired")
	}
}

// expectW2Woken checks that w2 acquires within 3s, well before its poll:
// the lock is free, and after what happened, w2 must have been woken.
func (q *twoWaiters) expectW2Woken(t *testing.T, what string) {
	t.Helper()
	select {
	case err := <-q.got2:
		if err != nil {
			t.Fatal(err)
		}
		q.release2()
	case <-time.After(3 * time.Second):
		t.Errorf("w2 not woken within 3s after %s: the lock is free, and w2 polls only every 20s", what)
		q.cancel2()
		<-q.got2
	}
}

// acquireAsync acquires a permit of s in a goroutine of its own, and sends
// it, or nil if Acquire failed.
func acquireAsync(t *testing.T, s *Semaphore) <-chan *Permit {
	got := make(chan *Permit, 1)
	go func() {
		p, err := s.Acquire(t.Context())
		if err != nil {
			t.Errorf("Acquire = %v", err)
		}
		got <- p
	}()
	return got
}

// slowPoller is a waiter for a Semaphore's permit that polls only every
// 20s: one that acquires within seconds was woken by name.
type slowPoller struct {
	got    <-chan *Permit
	cancel func()
}

// queueSlowPoller starts a slowPoller and waits until it is queued.
func queueSlowPoller(t *testing.T, clients []redis.UniversalClient, mrs []*miniredis.Miniredis, name string, permits int) *slowPoller {
	t.Helper()
	c := newClient(t, clients, WithRetryDelay(2*time.Second), WithRetryJitter(0))
	s := c.NewSemaphore(name, permits)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	got := make(chan *Permit, 1)
	go func() {
		p, _ := s.Acquire(ctx)
		got <- p
	}()
	waitFor(t, "the slow poller to queue", func() bool { return queuedOn(mrs[0], s.keys.queueKeys[0].(string), c) })
	return &slowPoller{got: got, cancel: cancel}
}

// expectWoken checks that the poller acquires within 3s after what.
func (w *slowPoller) expectWoken(t *testing.T, what string) {
	t.Helper()
	select {
	case p := <-w.got:
		p.Release(t.Context())
	case <-time.After(3 * time.Second):
		t.Errorf("a waiter that polls every 20s not woken within 3s of %s, with a permit free", what)
		w.cancel()
		if p := <-w.got; p != nil {
			p.Release(t.Context())
		}
	}
}

// expirePermit deletes p's slot on every master of mrs, as its expiry
// would once its holder's process died.
func expirePermit(mrs []*miniredis.Miniredis, s *Semaphore, p *Permit) {
	for _, key := range s.keys.slots {
		if v, _ := mrs[0].Get(key); v == p.l.value {
			for _, mr := range mrs {
				mr.Del(key)
			}
		}
	}
}

// hookedClients returns clients of mrs of their own, each behind a fault
// layer, for a waiter whose calls a test delays.
func hookedClients(t *testing.T, mrs []*miniredis.Miniredis) ([]redis.UniversalClient, []*faultHook) {
	return hookedClientsHearingLate(t, mrs, 0)
}

// hookedClientsHearingLate returns hookedClients whose subscriptions hear
// their messages subDelay late, if it is positive (see slowSubConn): on
// lateNodes, or on every node if none is named.
func hookedClientsHearingLate(t *testing.T, mrs []*miniredis.Miniredis, subDelay time.Duration, lateNodes ...int) ([]redis.UniversalClient, []*faultHook) {
	t.Helper()
	var own []redis.UniversalClient
	var hooks []*faultHook
	for i, mr := range mrs {
		opts := &redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1}
		if subDelay > 0 && (lateNodes == nil || slices.Contains(lateNodes, i)) {
			opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				conn, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &slowSubConn{Conn: conn, delay: subDelay}, nil
			}
		}
		rc := redis.NewClient(opts)
		t.Cleanup(func() { rc.Close() })
		h := newFaultHook(i, 1)
		rc.AddHook(h)
		t.Cleanup(h.wait)
		own, hooks = append(own, rc), append(hooks, h)
	}
	return own, hooks
}

// A Semaphore waiter that wins a permit by polling while a release of
// another permit pops and wakes it must pass that wake-up on: the permit the
// release freed is free, and the waiter behind it should be woken. It must
// whether the wake-up reached it before it won, or is still on its way.
func TestPollWinnerPassesOnAWakeUpItDidNotUse(t *testing.T) {
	for name, subDelay := range map[string]time.Duration{"heard": 0, "in flight": time.Second} {
		t.Run(name, func(t *testing.T) {
			mrs, clients := servers(t, 3)
			holder := newClient(t, clients).NewSemaphore("absorb2", 2)
			held := holdAll(t, holder)
			own, hooks := hookedClientsHearingLate(t, mrs, subDelay)
			w1c := newClient(t, own, WithRetryDelay(100*time.Millisecond), WithRetryJitter(0), WithNodeTimeout(2*time.Second))
			w1 := w1c.NewSemaphore("absorb2", 2)
			got1 := acquireAsync(t, w1)
			queue := holder.keys.queueKeys[0].(string)
			waitFor(t, "w1 to queue", func() bool { return queuedOn(mrs[0], queue, w1c) })
			w2 := queueSlowPoller(t, clients, mrs, "absorb2", 2)
			settle(t, holder.client.nodes)
			// w1's next attempt runs at once, its replies come back late.
			for _, h := range hooks {
				h.add(&fault{match: isKind("acquire"), after: 400 * time.Millisecond})
			}
			attempts := len(hooks[0].sent(isKind("acquire")))
			expirePermit(mrs, holder, held[0]) // its process died
			waitFor(t, "w1's polling attempt", func() bool { return len(hooks[0].sent(isKind("acquire"))) > attempts })
			time.Sleep(100 * time.Millisecond)                   // it ran; its reply is on its way
			if err := held[1].Release(t.Context()); err != nil { // frees a permit, wakes w1 (first in the queue)
				t.Fatal(err)
			}
			var q1 *Permit
			select {
			case q1 = <-got1:
			case <-time.After(5 * time.Second):
				t.Fatal("w1 did not take the freed permit")
			}
			if q1 == nil {
				t.Fatal("w1 got no permit")
			}
			defer q1.Release(context.Background())
			w2.expectWoken(t, "held[1]'s release, which w1 did not need")
		})
	}
}

// A waiter that gives up, not woken, listens until its leave has reached
// the servers: a release that runs in between pops it and wakes it, and it
// passes that wake-up on to the waiter behind it instead of losing it.
func TestReleaseDuringALeaveIsPassedOn(t *testing.T) {
	for kind, newLock := range queuedKinds {
		t.Run(kind, func(t *testing.T) {
			q := queueTwoWaiters(t, newLock, "leaving", 0, WithNodeTimeout(2*time.Second))
			for _, h := range q.hooks {
				h.add(&fault{match: isKind("enqueue"), before: 500 * time.Millisecond})
			}
			leaves := len(q.hooks[0].sent(isKind("enqueue")))
			q.cancel1() // w1 gives up, not woken
			waitFor(t, "w1's leave to be sent", func() bool { return len(q.hooks[0].sent(isKind("enqueue"))) > leaves })
			q.release() // runs before w1's leave reaches the nodes, and wakes w1
			q.w1GivesUp(t)
			q.expectW2Woken(t, "a release woke w1 as it was leaving")
		})
	}
}

// A waiter that gives up just after a release took it out of the queue
// and woke it, while the wake-up is still on its way to it, passes that
// wake-up on: its leave finds it out of the queue, and the nodes, not what
// it heard, say that a release woke it.
func TestWakeUpInFlightAtLeaveIsPassedOn(t *testing.T) {
	for kind, newLock := range queuedKinds {
		t.Run(kind, func(t *testing.T) {
			q := queueTwoWaiters(t, newLock, "inflight", time.Second, WithNodeTimeout(2*time.Second))
			settle(t, q.holder.nodes)
			q.release() // takes w1 out and wakes it; w1 hears of it a second later
			settle(t, q.holder.nodes)
			q.w1GivesUp(t)
			q.expectW2Woken(t, "a release woke w1, which gave up before it heard of it")
		})
	}
}

// A waiter that wins right after its wake-up sends no queue call (the
// release took it out of the queue), and one that wins by polling does not
// wait for its leave to reach a hung minority node.
func TestWokenWinnerMakesNoQueueCall(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	h := c.NewMutex("hot")
	if _, err := h.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	own, hooks := hookedClients(t, mrs)
	wc := newClient(t, own, WithRetryDelay(100*time.Millisecond), WithRetryJitter(0), WithNodeTimeout(time.Second))
	w := wc.NewMutex("hot")
	got := async(func() error { _, err := w.LockContext(t.Context()); return err })
	waitFor(t, "w to queue", func() bool { return queuedOn(mrs[0], h.key+queueSuffix, wc) })
	n := len(hooks[0].sent(isKind("enqueue")))
	h.Unlock()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if m := len(hooks[0].sent(isKind("enqueue"))); m != n {
		t.Errorf("woken winner sent %d queue calls after its wake-up", m-n)
	}
	w.Unlock()
	// poll winner with node 2 hung for queue calls
	if _, err := h.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	got = async(func() error { _, err := w.LockContext(t.Context()); return err })
	waitFor(t, "w to queue", func() bool { return queuedOn(mrs[0], h.key+queueSuffix, wc) })
	settle(t, c.nodes)
	hooks[2].add(&fault{match: isKind("enqueue"), before: 5 * time.Second})
	for _, mr := range mrs {
		mr.Del(h.key)
	}
	start := time.Now()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("poll winner returned %v after the key went", time.Since(start))
	case <-time.After(4 * time.Second):
		t.Fatal("poll winner blocked on a hung minority")
	}
	w.Unlock()
}

// A release wakes the waiter at the head of the queue on every node, and so
// sends it one message per node. A copy that comes in after the woken
// waiter lost its attempt and queued again is stale: the waiter is in the
// queue again on every node. If it then wins, it must still leave the
// queue, or it stays at the head as a holder: Status counts it, and the
// next release wakes it instead of the live waiter behind it. The copy
// from node 2 is made to come 300ms late; w1's next two attempts fail on
// nodes 0 and 1.
func TestStaleWakeUpCopyDoesNotKeepAWinnerQueued(t *testing.T) {
	t.Run("semaphore", func(t *testing.T) {
		mrs, clients := servers(t, 3)
		holder := newClient(t, clients).NewSemaphore("stale", 2)
		held := holdAll(t, holder)
		own, hooks := hookedClientsHearingLate(t, mrs, 300*time.Millisecond, 2)
		c1 := newClient(t, own, WithRetryDelay(2*time.Second), WithRetryJitter(0))
		got1 := acquireAsync(t, c1.NewSemaphore("stale", 2))
		queue := holder.keys.queueKeys[0].(string)
		waitFor(t, "w1 to queue", func() bool { return queuedOn(mrs[0], queue, c1) })
		w2 := queueSlowPoller(t, clients, mrs, "stale", 2)
		settle(t, holder.client.nodes)
		for _, h := range hooks[:2] {
			h.add(&fault{match: isKind("acquire"), fail: errors.New("transient"), times: 2})
		}
		if err := held[0].Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		var p1 *Permit
		select {
		case p1 = <-got1:
		case <-time.After(5 * time.Second):
			t.Fatal("w1 did not take the freed permit")
		}
		defer p1.Release(context.Background())
		settle(t, c1.nodes)
		if st, err := holder.Status(t.Context()); err != nil || st.Waiters != 1 {
			t.Errorf("Status() = %+v, %v after w1 won; want 1 waiter, w2", st, err)
		}
		if err := held[1].Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		w2.expectWoken(t, "held[1]'s release, with w1 holding a permit")
	})
	t.Run("mutex", func(t *testing.T) {
		mrs, clients := servers(t, 3)
		hc := newClient(t, clients)
		h := hc.NewMutex("stalem")
		if _, err := h.LockContext(t.Context()); err != nil {
			t.Fatal(err)
		}
		own, hooks := hookedClientsHearingLate(t, mrs, 300*time.Millisecond, 2)
		c1 := newClient(t, own, WithRetryDelay(2*time.Second), WithRetryJitter(0))
		w1 := c1.NewMutex("stalem")
		got := make(chan error, 1)
		go func() { _, err := w1.LockContext(t.Context()); got <- err }()
		waitFor(t, "w1 to queue", func() bool { return queuedOn(mrs[0], h.key+queueSuffix, c1) })
		settle(t, hc.nodes)
		for _, hk := range hooks[:2] {
			hk.add(&fault{match: isKind("acquire"), fail: errors.New("transient"), times: 2})
		}
		h.Unlock()
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("w1 did not take the lock")
		}
		defer w1.Unlock()
		settle(t, c1.nodes)
		if st, err := h.Status(t.Context()); err != nil || st.Waiters != 0 {
			t.Errorf("Status() = %+v, %v while the only waiter holds the lock; want 0 waiters", st, err)
		}
	})
}
