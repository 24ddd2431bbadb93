package redlock

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// The hand-off under contention: a wake-up costs the waiter it names one
// attempt, and nobody else anything.

// lockedMutex returns a Mutex called name, on a Client of its own, locked.
func lockedMutex(t *testing.T, clients []redis.UniversalClient, name string) *Mutex {
	t.Helper()
	m := newClient(t, clients).NewMutex(name)
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	return m
}

// lockAsync locks m in a goroutine and returns the channel of its error.
func lockAsync(t *testing.T, m *Mutex) <-chan error {
	return async(func() error { _, err := m.LockContext(t.Context()); return err })
}

// queuedOnAll reports whether a waiter of c is in queue on every server.
func queuedOnAll(mrs []*miniredis.Miniredis, queue string, c *Client) bool {
	for _, mr := range mrs {
		if !queuedOn(mr, queue, c) {
			return false
		}
	}
	return true
}

// acquireCalls counts the acquisition attempts a Client's node 0 was sent.
func acquireCalls(h *faultHook) int { return len(h.sent(isKind("acquire"))) }

// A Mutex's waiter that joined the queue more than once and then won after
// a wake-up must not pass that wake-up on: the lock is held, and the waiter
// behind it would only try, lose and queue again. w1 polls, and so joins
// again and again; w2 waits for wake-ups only (its polls are 20s apart).
// w2 must make no attempt between w1's win and w1's release.
func TestWinnerPassesNoWakeUpOn(t *testing.T) {
	mrs, clients := servers(t, 3)
	h := lockedMutex(t, clients, "hot")
	own1, hooks1 := hookedClients(t, mrs)
	w1 := newClient(t, own1, WithRetryDelay(20*time.Millisecond), WithRetryJitter(0)).NewMutex("hot")
	got1 := lockAsync(t, w1)
	// Its third attempt follows its second join.
	waitFor(t, "w1 to poll twice", func() bool { return acquireCalls(hooks1[0]) >= 3 })
	own2, hooks2 := hookedClients(t, mrs)
	c2 := newClient(t, own2, WithRetryDelay(2*time.Second), WithRetryJitter(0))
	w2 := c2.NewMutex("hot")
	got2 := lockAsync(t, w2)
	waitFor(t, "w2 to queue", func() bool { return queuedOnAll(mrs, h.key+queueSuffix, c2) })
	settle(t, w2.client.nodes)
	before := acquireCalls(hooks2[0])
	h.Unlock()
	if err := <-got1; err != nil {
		t.Fatal(err)
	}
	// A wake-up passed on would reach w2 within a few round trips; 200ms
	// is the window, well inside w2's 20s polls.
	time.Sleep(200 * time.Millisecond)
	settle(t, w2.client.nodes)
	if n := acquireCalls(hooks2[0]) - before; n != 0 {
		t.Errorf("w2 made %d attempts while w1 held the lock: w1's win passed a wake-up on", n)
	}
	w1.Unlock()
	if err := <-got2; err != nil {
		t.Fatal(err)
	}
	w2.Unlock()
}

// A release publishes its wake-up on every node, so the waiter it names
// hears it up to once per node. If the waiter's attempt then loses (another
// Client took the lock first), a copy that came in meanwhile must not send
// it straight into another attempt against the new holder: it queues and
// waits for that holder's release. w's first attempt after the wake-up is
// held back 100ms on every node, while b takes the lock.
func TestStaleWakeUpCopyCostsNoAttempt(t *testing.T) {
	mrs, clients := servers(t, 3)
	h := lockedMutex(t, clients, "hot")
	own, hooks := hookedClients(t, mrs)
	wc := newClient(t, own, WithRetryDelay(2*time.Second), WithRetryJitter(0))
	w := wc.NewMutex("hot")
	got := lockAsync(t, w)
	waitFor(t, "w to queue", func() bool { return queuedOnAll(mrs, h.key+queueSuffix, wc) })
	settle(t, wc.nodes)
	for _, hk := range hooks {
		hk.add(&fault{match: isKind("acquire"), before: 100 * time.Millisecond, times: 1})
	}
	before := acquireCalls(hooks[0])
	b := newClient(t, clients).NewMutex("hot")
	h.Unlock()
	if _, err := b.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	// w's held-back attempt loses to b; w queues again.
	waitFor(t, "w to lose and queue again", func() bool {
		return acquireCalls(hooks[0]) > before && len(hooks[0].sent(isKind("enqueue"))) >= 2
	})
	// An attempt on a stale copy would follow at once; 200ms is the
	// window, well inside w's 20s polls.
	time.Sleep(200 * time.Millisecond)
	settle(t, wc.nodes)
	if n := acquireCalls(hooks[0]) - before; n != 1 {
		t.Errorf("w made %d attempts while b held the lock; want 1, the one its wake-up was for", n)
	}
	b.Unlock()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	w.Unlock()
}

// A waiter that wins by polling is still queued on every node: once
// LockContext has returned, Status, from any process, counts it no more.
// Its leave takes 300ms to reach the servers, as over a slow link. (Failed
// first when the winner's leave was not waited for.)
func TestPollWinnerIsNotAWaiterOnceLockReturns(t *testing.T) {
	mrs, clients := servers(t, 3)
	hc := newClient(t, clients)
	h := hc.NewMutex("r1")
	if _, err := h.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	own, hooks := hookedClients(t, mrs)
	wc := newClient(t, own, WithRetryDelay(20*time.Millisecond), WithRetryJitter(0))
	w := wc.NewMutex("r1")
	got := lockAsync(t, w)
	waitFor(t, "w to queue", func() bool { return queuedOn(mrs[0], h.key+queueSuffix, wc) })
	settle(t, wc.nodes)
	for _, hk := range hooks {
		hk.add(&fault{match: isKind("enqueue"), before: 300 * time.Millisecond})
	}
	for _, mr := range mrs { // the holder's process died; its key expired
		mr.Del(h.key)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("w did not take the freed lock")
	}
	st, err := h.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	mine, err := w.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Waiters != 0 || mine.Waiters != 0 {
		t.Errorf("after w's LockContext returned: Status() = %+v (other client), %+v (holder); want 0 waiters: nobody waits", st, mine)
	}
	w.Unlock()
}

// Two waiters whose joins crossed: w heads node 0's queue, v nodes 1 and
// 2. h's release wakes w from node 0 alone and w wins (v's attempt is held
// back); w is still queued on nodes 1 and 2, a quorum, and must leave them,
// or Status counts it while it holds the lock. (Failed first: Status said
// 2 waiters.)
func TestWokenWinnerLeavesWhereItWasNotHead(t *testing.T) {
	mrs, clients := servers(t, 3)
	hc := newClient(t, clients)
	h := hc.NewMutex("r7")
	if _, err := h.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	queue := h.key + queueSuffix
	wc := newClient(t, clients, WithRetryDelay(2*time.Second), WithRetryJitter(0))
	w := wc.NewMutex("r7")
	gotW := lockAsync(t, w)
	waitFor(t, "w to queue", func() bool { return queuedOnAll(mrs, queue, wc) })
	vown, vhooks := hookedClients(t, mrs)
	vc := newClient(t, vown, WithRetryDelay(2*time.Second), WithRetryJitter(0))
	v := vc.NewMutex("r7")
	gotV := lockAsync(t, v)
	waitFor(t, "v to queue", func() bool { return queuedOnAll(mrs, queue, vc) })
	settle(t, wc.nodes)
	settle(t, vc.nodes)
	// Their joins crossed on nodes 1 and 2: v is ahead there.
	for _, mr := range mrs[1:] {
		l, _ := mr.List(queue)
		if len(l) != 2 {
			t.Fatalf("queue %v", l)
		}
		mr.Del(queue)
		mr.Push(queue, l[1], l[0])
	}
	for _, hk := range vhooks {
		hk.add(&fault{match: isKind("acquire"), before: 200 * time.Millisecond, times: 1})
	}
	h.Unlock()
	if err := <-gotW; err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // v's attempt loses; v queues again
	settle(t, wc.nodes)
	settle(t, vc.nodes)
	st, err := h.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Waiters != 1 {
		for i, mr := range mrs {
			t.Logf("node %d queue: %v", i, queueOf(mr, "r7"))
		}
		t.Errorf("Status() = %+v while w holds the lock and only v waits; want 1 waiter", st)
	}
	w.Unlock()
	if err := <-gotV; err != nil {
		t.Fatal(err)
	}
	v.Unlock()
}

// A contender whose attempt's keys landed on every node, but whose replies
// came too late for its ctx, looks like a holder to the waiter its keys
// met: that waiter queues and sleeps for a holder's release. Undoing the
// keys must wake it, or it sleeps a full poll with the lock free. (Failed
// first: w took the lock 2s after h's release.)
func TestAbandonedAttemptWakesTheWaiterItStalled(t *testing.T) {
	mrs, clients := servers(t, 3)
	h := lockedMutex(t, clients, "r5")
	wc := newClient(t, clients, WithRetryDelay(200*time.Millisecond), WithRetryJitter(0))
	w := wc.NewMutex("r5")
	got := lockAsync(t, w)
	waitFor(t, "w to queue", func() bool { return queuedOnAll(mrs, h.key+queueSuffix, wc) })
	settle(t, wc.nodes)
	xown, xhooks := hookedClients(t, mrs)
	xc := newClient(t, xown, WithNodeTimeout(time.Second))
	x := xc.NewMutex("r5")
	warmX, warmed := context.WithTimeout(t.Context(), time.Second)
	x.TryLockContext(warmX) // loads the scripts; refused: h holds
	warmed()
	for _, hk := range xhooks {
		hk.add(&fault{match: isKind("acquire"), after: 500 * time.Millisecond})
	}
	h.Unlock() // wakes w
	released := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := x.TryLockContext(ctx); err == nil {
		t.Fatal("x got the lock")
	}
	// x gives up at 300ms and releases its grants at once, waking nobody.
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("w took the lock %v after h's release", time.Since(released))
		if d := time.Since(released); d > time.Second {
			t.Errorf("w, at the head of the queue, took the lock %v after h's release, ~%v after x gave up: it waited for a poll", d, d-300*time.Millisecond)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("w did not take the lock")
	}
	w.Unlock()
}

// A release's wake-up copies from nodes 1 and 2 come 1s late, after w
// lost its attempt (to another holder) and joined again at the front of
// every queue: they are stale, and w, winning later, must still leave the
// queue, or Status counts it once LockContext has returned.
func TestStaleCopiesAfterARejoinDoNotLetAWinnerStayQueued(t *testing.T) {
	mrs, clients := servers(t, 3)
	hc := newClient(t, clients)
	h := hc.NewMutex("zz-stale")
	if _, err := h.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	queue := h.key + queueSuffix
	own, hooks := hookedClientsHearingLate(t, mrs, time.Second, 1, 2)
	wc := newClient(t, own, WithRetryDelay(2*time.Second), WithRetryJitter(0), WithNodeTimeout(time.Second))
	w := wc.NewMutex("zz-stale")
	got := lockAsync(t, w)
	waitFor(t, "w to queue", func() bool { return queuedOnAll(mrs, queue, wc) })
	settle(t, wc.nodes)
	time.Sleep(400 * time.Millisecond) // the subscriptions' late confirmations
	for _, hk := range hooks {
		hk.add(&fault{match: isKind("acquire"), before: 100 * time.Millisecond, times: 1})
	}
	enqueues := len(hooks[0].sent(isKind("enqueue")))
	h.Unlock() // pops w on every node
	unlocked := time.Now()
	// Another holder takes the lock before w's attempt runs.
	for _, mr := range mrs {
		mr.Set(h.key, valuePrefix+"OTHERHOLDER")
		mr.SetTTL(h.key, 10*time.Second)
	}
	waitFor(t, "w to lose and join again", func() bool { return len(hooks[0].sent(isKind("enqueue"))) > enqueues })
	settle(t, wc.nodes)
	for _, hk := range hooks { // w's next attempt, on a slow link
		hk.add(&fault{match: isKind("acquire"), before: 50 * time.Millisecond, times: 1})
	}
	for _, mr := range mrs { // the other holder's process died
		mr.Del(h.key)
	}
	t.Logf("deleted at %v", time.Since(unlocked))
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("w did not take the lock")
	}
	t.Logf("won at %v", time.Since(unlocked))
	settle(t, wc.nodes)
	st, err := h.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Waiters != 0 {
		for _, c := range hooks[0].sent(isKind("acquire", "enqueue")) {
			t.Logf("node 0 %s at %v -> %s", c.kind, c.at.Sub(unlocked), c.result)
		}
		for i, mr := range mrs {
			t.Logf("node %d queue: %v", i, queueOf(mr, "zz-stale"))
		}
		t.Errorf("Status() = %+v once w's LockContext returned and its calls settled; want 0 waiters: nobody waits", st)
	}
	w.Unlock()
}

// idOf returns the id of c's waiter in queue on mr, or "".
func idOf(mr *miniredis.Miniredis, queue string, c *Client) string {
	l, _ := mr.List(queue)
	for _, id := range l {
		if strings.HasPrefix(id, c.notifier.id+waiterSeparator) {
			return id
		}
	}
	return ""
}

// setQueue makes queue on mr hold ids, in order.
func setQueue(mr *miniredis.Miniredis, queue string, ids ...string) {
	mr.Del(queue)
	mr.RPush(queue, ids...)
}

// Two Semaphore waiters whose joins crossed each win after wake-ups from
// two nodes of three, and each is still queued on the third, a different
// one for each: both must leave there, or a quorum of nodes counts a
// waiter that does not exist. (Failed first: Status said 2 waiters, want
// 1.)
func TestSemaphoreWinnersLeaveTheNodesThatDidNotWakeThem(t *testing.T) {
	mrs, clients := servers(t, 3)
	h := newClient(t, clients).NewSemaphore("zzsem", 2)
	held := holdAll(t, h)
	queue := h.keys.queueKeys[0].(string)
	opts := []Option{WithRetryDelay(2 * time.Second), WithRetryJitter(0)}
	own1, hooks1 := hookedClients(t, mrs)
	c1 := newClient(t, own1, opts...)
	own2, hooks2 := hookedClients(t, mrs)
	c2 := newClient(t, own2, opts...)
	ownZ, hooksZ := hookedClients(t, mrs)
	cZ := newClient(t, ownZ, opts...)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	acq := func(c *Client) <-chan *Permit {
		got := make(chan *Permit, 1)
		go func() {
			p, _ := c.NewSemaphore("zzsem", 2).Acquire(ctx)
			got <- p
		}()
		return got
	}
	got1, got2, gotZ := acq(c1), acq(c2), acq(cZ)
	for _, c := range []*Client{c1, c2, cZ} {
		waitFor(t, "waiters to queue", func() bool { return queuedOnAll(mrs, queue, c) })
	}
	settle(t, c1.nodes)
	settle(t, c2.nodes)
	settle(t, cZ.nodes)
	w1, w2, z := idOf(mrs[0], queue, c1), idOf(mrs[0], queue, c2), idOf(mrs[0], queue, cZ)
	// Crossed joins: two releases pop the first two ids on each node.
	setQueue(mrs[0], queue, w1, w2, z)
	setQueue(mrs[1], queue, z, w1, w2)
	setQueue(mrs[2], queue, z, w2, w1)
	for _, hk := range hooks1 {
		hk.add(&fault{match: isKind("acquire"), before: 100 * time.Millisecond, times: 1})
	}
	for _, hk := range hooks2 {
		hk.add(&fault{match: isKind("acquire"), before: 100 * time.Millisecond, times: 1})
	}
	for _, hk := range hooksZ {
		hk.add(&fault{match: isKind("acquire"), before: 600 * time.Millisecond, times: 1})
	}
	for _, p := range held {
		if err := p.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	var p1, p2 *Permit
	for _, got := range []<-chan *Permit{got1, got2} {
		select {
		case p := <-got:
			if p == nil {
				t.Fatal("Acquire failed")
			}
			if p1 == nil {
				p1 = p
			} else {
				p2 = p
			}
		case <-time.After(5 * time.Second):
			t.Fatal("w1/w2 not woken")
		}
	}
	defer p1.Release(context.Background())
	defer p2.Release(context.Background())
	time.Sleep(900 * time.Millisecond) // z's held-back attempt loses; z queues again
	settle(t, c1.nodes)
	settle(t, c2.nodes)
	settle(t, cZ.nodes)
	st, err := h.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Waiters != 1 {
		for i, mr := range mrs {
			l, _ := mr.List(queue)
			t.Logf("node %d queue: %v  (w1=%s w2=%s z=%s)", i, l, w1[len(w1)-6:], w2[len(w2)-6:], z[len(z)-6:])
		}
		t.Errorf("Status() = %+v once w1 and w2 hold permits and only z waits; want Waiters 1", st)
	}
	cancel()
	if p := <-gotZ; p != nil {
		p.Release(context.Background())
	}
}

// Three Semaphore winners, each woken by two nodes of three, each left
// queued on a different node, would absorb every node's copy of a later
// release's wake-up, and the only waiter, v, would sleep to its poll with
// a permit free. (Failed first: v not woken within 3s.)
func TestSemaphoreWinnersLeftQueuedAbsorbNoWakeUp(t *testing.T) {
	mrs, clients := servers(t, 3)
	h := newClient(t, clients).NewSemaphore("zzsem4", 4)
	held := holdAll(t, h)
	queue := h.keys.queueKeys[0].(string)
	opts := []Option{WithRetryDelay(2 * time.Second), WithRetryJitter(0)}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	type w struct {
		c     *Client
		hooks []*faultHook
		got   chan *Permit
		stop  context.CancelFunc
	}
	start := func() *w {
		own, hooks := hookedClients(t, mrs)
		c := newClient(t, own, opts...)
		wctx, stop := context.WithCancel(ctx)
		x := &w{c: c, hooks: hooks, got: make(chan *Permit, 1), stop: stop}
		go func() {
			p, _ := c.NewSemaphore("zzsem4", 4).Acquire(wctx)
			x.got <- p
		}()
		return x
	}
	ws := []*w{start(), start(), start(), start()} // w1, w2, w3, z
	for _, x := range ws {
		waitFor(t, "waiters to queue", func() bool { return queuedOnAll(mrs, queue, x.c) })
	}
	for _, x := range ws {
		settle(t, x.c.nodes)
	}
	id := func(x *w) string { return idOf(mrs[0], queue, x.c) }
	w1, w2, w3, z := id(ws[0]), id(ws[1]), id(ws[2]), id(ws[3])
	// Crossed joins: three releases pop the first three ids on each node.
	setQueue(mrs[0], queue, z, w2, w3, w1)
	setQueue(mrs[1], queue, z, w1, w3, w2)
	setQueue(mrs[2], queue, z, w1, w2, w3)
	for i, x := range ws {
		d := 100 * time.Millisecond
		if i == 3 {
			d = 600 * time.Millisecond
		}
		for _, hk := range x.hooks {
			hk.add(&fault{match: isKind("acquire"), before: d, times: 1})
		}
	}
	for _, p := range held[:3] {
		if err := p.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range ws[:3] {
		select {
		case p := <-x.got:
			if p == nil {
				t.Fatal("Acquire failed")
			}
			defer p.Release(context.Background())
		case <-time.After(5 * time.Second):
			t.Fatal("w1..w3 not woken")
		}
	}
	time.Sleep(900 * time.Millisecond) // z's held-back attempt loses; z queues again
	ws[3].stop()                       // z gives up
	if p := <-ws[3].got; p != nil {
		t.Fatal("z acquired")
	}
	for _, x := range ws {
		settle(t, x.c.nodes)
	}
	for i, mr := range mrs {
		l, _ := mr.List(queue)
		t.Logf("node %d queue before v: %v", i, l)
	}
	v := queueSlowPoller(t, clients, mrs, "zzsem4", 4)
	waitFor(t, "v to queue everywhere", func() bool {
		for _, mr := range mrs {
			if l, _ := mr.List(queue); len(l) < 1 {
				return false
			}
		}
		return true
	})
	time.Sleep(50 * time.Millisecond)
	if err := held[3].Release(t.Context()); err != nil { // a permit is free; v is the only waiter
		t.Fatal(err)
	}
	v.expectWoken(t, "the release of the fourth permit, v being the only waiter")
}
