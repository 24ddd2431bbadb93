package redlock

import (
	"context"
	"errors"
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
			mrs, clients := servers(t, 3)
			holder := newLock(t, clients, "giveup")
			release, err := holder.acquire(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			// w1 reaches the servers through a fault layer of its own.
			var own []redis.UniversalClient
			var hooks []*faultHook
			for i, mr := range mrs {
				rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
				t.Cleanup(func() { rc.Close() })
				h := newFaultHook(i, 1)
				rc.AddHook(h)
				t.Cleanup(h.wait)
				own, hooks = append(own, rc), append(hooks, h)
			}
			opts := []Option{WithRetryDelay(2 * time.Second), WithRetryJitter(0)} // a queued waiter polls every 20s
			w1 := newLock(t, own, "giveup", opts...)
			w2 := newLock(t, clients, "giveup", opts...)
			ctx1, cancel1 := context.WithCancel(t.Context())
			defer cancel1()
			gave := async(func() error {
				release, err := w1.acquire(ctx1)
				if err == nil {
					release()
				}
				return err
			})
			waitFor(t, "w1 to queue", func() bool { return queuedOn(mrs[0], w1.queue, w1.listener) })
			ctx2, cancel2 := context.WithCancel(t.Context())
			defer cancel2()
			var release2 func()
			got2 := async(func() (err error) { release2, err = w2.acquire(ctx2); return err })
			waitFor(t, "w2 to queue", func() bool { return queuedOn(mrs[0], w2.queue, w2.listener) })
			// w1's next attempt is answered only after it gives up.
			for _, h := range hooks {
				h.add(&fault{match: isKind("acquire"), fail: errors.New("slow"), before: time.Second})
			}
			attempts := len(hooks[0].sent(isKind("acquire")))
			release() // wakes w1
			waitFor(t, "w1's attempt", func() bool { return len(hooks[0].sent(isKind("acquire"))) > attempts })
			cancel1()
			if err := <-gave; err == nil {
				t.Fatal("w1 acquired")
			}
			select {
			case err := <-got2:
				if err != nil {
					t.Fatal(err)
				}
				release2()
			case <-time.After(3 * time.Second):
				t.Error("w2 not woken within 3s of w1 giving up its wake-up: the lock is free, and w2 polls only every 20s")
				cancel2()
				<-got2
			}
		})
	}
}

// A Semaphore's holder that got its permit by polling is out of the queue,
// so that another holder's release wakes the live waiter behind it, not the
// holder.
func TestSemaphoreHolderDoesNotAbsorbAWakeUp(t *testing.T) {
	mrs, clients := servers(t, 3)
	holder := newClient(t, clients).NewSemaphore("absorb", 2)
	var held []*Permit
	for range 2 {
		p, err := holder.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	w1c := newClient(t, clients, WithRetryDelay(100*time.Millisecond), WithRetryJitter(0))
	w1 := w1c.NewSemaphore("absorb", 2)
	got1 := make(chan *Permit, 1)
	go func() {
		q, err := w1.Acquire(t.Context())
		if err != nil {
			t.Errorf("w1 Acquire = %v", err)
		}
		got1 <- q
	}()
	queue := holder.keys.queueKeys[0].(string)
	waitFor(t, "w1 to queue", func() bool { return queuedOn(mrs[0], queue, w1c) })
	settle(t, holder.client.nodes)
	// held[0]'s process dies; its slot expires on every master.
	for _, key := range holder.keys.slots {
		if v, _ := mrs[0].Get(key); v == held[0].l.value {
			for _, mr := range mrs {
				mr.Del(key)
			}
		}
	}
	var q1 *Permit
	select {
	case q1 = <-got1:
	case <-time.After(5 * time.Second):
		t.Fatal("w1 did not take the freed permit by polling")
	}
	defer q1.Release(t.Context())
	w2c := newClient(t, clients, WithRetryDelay(2*time.Second), WithRetryJitter(0)) // polls every 20s
	w2 := w2c.NewSemaphore("absorb", 2)
	ctx2, cancel2 := context.WithCancel(t.Context())
	defer cancel2()
	got2 := make(chan *Permit, 1)
	go func() {
		q, _ := w2.Acquire(ctx2)
		got2 <- q
	}()
	waitFor(t, "w2 to queue", func() bool { return queuedOn(mrs[0], queue, w2c) })
	if err := held[1].Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case q := <-got2:
		q.Release(t.Context())
	case <-time.After(3 * time.Second):
		l, _ := mrs[0].List(queue)
		t.Errorf("w2 not woken within 3s of a release that freed a permit; queue on node 0: %v", l)
		cancel2()
		if q := <-got2; q != nil {
			q.Release(t.Context())
		}
	}
}

// An Acquire right after a release that woke a waiter queues behind the
// woken one; when it then wins a permit at once, it leaves the queue.
func TestSemaphoreAcquireBehindAWokenWaiterLeavesTheQueue(t *testing.T) {
	mrs, clients := servers(t, 3)
	s := newClient(t, clients).NewSemaphore("behind", 2)
	var held []*Permit
	for range 2 {
		p, err := s.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	wc := newClient(t, clients, WithRetryDelay(50*time.Millisecond), WithRetryJitter(0))
	w := wc.NewSemaphore("behind", 2)
	got := make(chan *Permit, 1)
	go func() {
		q, err := w.Acquire(t.Context())
		if err != nil {
			t.Errorf("Acquire = %v", err)
		}
		got <- q
	}()
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
