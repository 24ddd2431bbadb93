package redlock

import (
	"context"
	"errors"
	"github.com/redis/go-redis/v9"
	"sync"
	"testing"
	"time"
)

// A waiter that gets its permit by polling (not by a wake-up, which pops it
// from the queue) stays in the Semaphore's queue as a live waiter while it
// holds the permit: Status counts it as a waiter.
func TestReviewFinalHolderCountedAsWaiter(t *testing.T) {
	mrs, clients := servers(t, 3)
	holder := newClient(t, clients).NewSemaphore("rvcount", 1)
	p, err := holder.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(t.Context())
	w := newClient(t, clients, WithRetryDelay(50*time.Millisecond), WithRetryJitter(0)).NewSemaphore("rvcount", 1)
	got := make(chan *Permit, 1)
	go func() {
		q, err := w.Acquire(t.Context())
		if err != nil {
			t.Errorf("Acquire = %v", err)
		}
		got <- q
	}()
	queue := holder.keys.queueKeys[0].(string)
	waitFor(t, "the waiter to queue", func() bool { l, _ := mrs[0].List(queue); return len(l) == 1 })
	settle(t, holder.client.nodes)
	// The holder's process dies: its slot expires (here: is deleted) on
	// every master, with no release to wake anyone.
	for _, mr := range mrs {
		mr.Del(holder.keys.slots[0])
	}
	var q *Permit
	select {
	case q = <-got:
	case <-time.After(3 * time.Second):
		t.Fatal("the waiter did not take the freed permit")
	}
	defer q.Release(t.Context())
	st, err := w.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Waiters != 0 {
		t.Errorf("Status() = %+v after the only waiter got its permit; want Waiters 0 (queue on node 0: %v)", st, must(mrs[0].List(queue)))
	}
}

func must(l []string, _ error) []string { return l }

// The same holder, still queued, absorbs the wake-up of another holder's
// release: the live waiter behind it is not woken.
func TestReviewFinalHolderAbsorbsWakeUp(t *testing.T) {
	mrs, clients := servers(t, 3)
	holder := newClient(t, clients).NewSemaphore("rvabsorb", 2)
	var held []*Permit
	for range 2 {
		p, err := holder.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	w1 := newClient(t, clients, WithRetryDelay(100*time.Millisecond), WithRetryJitter(0)).NewSemaphore("rvabsorb", 2)
	got1 := make(chan *Permit, 1)
	go func() {
		q, err := w1.Acquire(t.Context())
		if err != nil {
			t.Errorf("w1 Acquire = %v", err)
		}
		got1 <- q
	}()
	queue := holder.keys.queueKeys[0].(string)
	waitFor(t, "w1 to queue", func() bool { l, _ := mrs[0].List(queue); return len(l) == 1 })
	settle(t, holder.client.nodes)
	// held[0]'s process dies; its slot expires on every master.
	var dead string
	for _, key := range holder.keys.slots {
		if v, _ := mrs[0].Get(key); v == held[0].l.value {
			dead = key
		}
	}
	for _, mr := range mrs {
		mr.Del(dead)
	}
	var q1 *Permit
	select {
	case q1 = <-got1:
	case <-time.After(3 * time.Second):
		t.Fatal("w1 did not take the freed permit")
	}
	defer q1.Release(t.Context())
	// w2 polls every 20s: only a wake-up is fast.
	w2 := newClient(t, clients, WithRetryDelay(2*time.Second), WithRetryJitter(0)).NewSemaphore("rvabsorb", 2)
	ctx2, cancel2 := context.WithCancel(t.Context())
	defer cancel2()
	got2 := make(chan *Permit, 1)
	go func() {
		q, _ := w2.Acquire(ctx2)
		got2 <- q
	}()
	waitFor(t, "w2 to queue", func() bool { l, _ := mrs[0].List(queue); return len(l) == 2 })
	if err := held[1].Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case q := <-got2:
		q.Release(t.Context())
	case <-time.After(3 * time.Second):
		t.Errorf("w2 not woken within 3s of a release that freed a permit; queue on node 0: %v", must(mrs[0].List(queue)))
		cancel2()
		q := <-got2
		if q != nil {
			q.Release(t.Context())
		}
	}
}

// No crash needed: after a Release that woke a waiter, the Semaphore's next
// Acquire queues behind the woken one (queueBehindWoken), wins at once, and
// is left in the queue as a live waiter while it holds its permit.
func TestReviewFinalAcquireAfterWakeStaysQueued(t *testing.T) {
	mrs, clients := servers(t, 3)
	s := newClient(t, clients).NewSemaphore("rvqueued", 2)
	var held []*Permit
	for range 2 {
		p, err := s.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	w := newClient(t, clients, WithRetryDelay(50*time.Millisecond), WithRetryJitter(0)).NewSemaphore("rvqueued", 2)
	got := make(chan *Permit, 1)
	go func() {
		q, err := w.Acquire(t.Context())
		if err != nil {
			t.Errorf("Acquire = %v", err)
		}
		got <- q
	}()
	queue := s.keys.queueKeys[0].(string)
	waitFor(t, "the waiter to queue", func() bool { l, _ := mrs[0].List(queue); return len(l) == 1 })
	if err := held[0].Release(t.Context()); err != nil { // wakes w
		t.Fatal(err)
	}
	q := <-got
	if err := q.Release(t.Context()); err != nil { // nobody waits now
		t.Fatal(err)
	}
	settle(t, s.client.nodes)
	p, err := s.Acquire(t.Context()) // a free permit, nobody waiting
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
		t.Errorf("Status() = %+v with nobody waiting; want %+v (queue on node 0: %v)", st, want, must(mrs[0].List(queue)))
	}
}

// A Mutex's acquisition that ends before any attempt (its context already
// done, the Client closed) is told as NotAcquired; a Semaphore's is not
// told at all.
func TestReviewFinalNotAcquiredEventOnEarlyEnd(t *testing.T) {
	_, clients := servers(t, 3)
	var mu sync.Mutex
	told := map[Kind][]error{}
	obs := &Observer{NotAcquired: func(ev NotAcquiredEvent) {
		mu.Lock()
		defer mu.Unlock()
		told[ev.Kind] = append(told[ev.Kind], ev.Err)
	}}
	c, err := New(clients, WithObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	m, s := c.NewMutex("rvev"), c.NewSemaphore("rvev", 2)
	done, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := m.LockContext(done); err == nil {
		t.Fatal("LockContext with a done ctx succeeded")
	}
	if _, err := s.Acquire(done); err == nil {
		t.Fatal("Acquire with a done ctx succeeded")
	}
	c.Close()
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("TryLockContext after Close = %v", err)
	}
	if _, err := s.TryAcquire(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("TryAcquire after Close = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told[KindMutex]) != 2 {
		t.Fatalf("the Mutex told %d NotAcquired events, want 2: %v", len(told[KindMutex]), told[KindMutex])
	}
	if got := len(told[KindSemaphore]); got != len(told[KindMutex]) {
		t.Errorf("the Semaphore told %d NotAcquired events for the same calls that the Mutex told %d (%v)", got, len(told[KindMutex]), told[KindMutex])
	}
}

// A waiter woken by a release whose context ends during the attempt the
// wake-up started gives up: the wake-up it absorbed is not passed on, and
// the live waiter queued behind it gets the free permit only by polling.
func TestReviewFinalWokenWaiterThatGivesUpAbsorbsWakeUp(t *testing.T) {
	mrs, clients := servers(t, 3)
	holder := newClient(t, clients).NewSemaphore("rvgiveup", 1)
	p, err := holder.Acquire(t.Context())
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
	opts := []Option{WithRetryDelay(2 * time.Second), WithRetryJitter(0)} // queued polls every 20s
	w1 := newClient(t, own, opts...).NewSemaphore("rvgiveup", 1)
	w2 := newClient(t, clients, opts...).NewSemaphore("rvgiveup", 1)
	queue := holder.keys.queueKeys[0].(string)
	ctx1, cancel1 := context.WithCancel(t.Context())
	defer cancel1()
	gave := make(chan error, 1)
	go func() {
		q, err := w1.Acquire(ctx1)
		if err == nil {
			q.Release(t.Context())
		}
		gave <- err
	}()
	waitFor(t, "w1 to queue", func() bool { l, _ := mrs[0].List(queue); return len(l) == 1 })
	ctx2, cancel2 := context.WithCancel(t.Context())
	defer cancel2()
	got2 := make(chan *Permit, 1)
	go func() {
		q, _ := w2.Acquire(ctx2)
		got2 <- q
	}()
	waitFor(t, "w2 to queue", func() bool { l, _ := mrs[0].List(queue); return len(l) == 2 })
	// w1's next attempt is slow to be answered.
	for _, h := range hooks {
		h.add(&fault{match: isKind("acquire"), fail: errors.New("slow"), before: time.Second})
	}
	if err := p.Release(t.Context()); err != nil { // wakes w1
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	cancel1() // w1 gives up during the attempt its wake-up began
	if err := <-gave; err == nil {
		t.Fatal("w1 acquired")
	}
	released := time.Now()
	select {
	case q := <-got2:
		if q != nil {
			q.Release(t.Context())
		}
	case <-time.After(3 * time.Second):
		st, _ := w2.Status(t.Context())
		t.Errorf("w2 not woken within 3s after w1 gave up (status %+v): the permit is free, only w2 waits, and it will poll in %v", st, 20*time.Second-time.Since(released))
		cancel2()
		<-got2
	}
}
