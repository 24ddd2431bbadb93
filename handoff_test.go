package redlock

import (
	"testing"
	"time"
)

// The hand-off under contention: a wake-up costs the waiter it names one
// attempt, and nobody else anything.

// acquireCalls counts the acquisition attempts a Client's node 0 was sent.
func acquireCalls(h *faultHook) int { return len(h.sent(isKind("acquire"))) }

// A Mutex's waiter that joined the queue more than once and then won after
// a wake-up must not pass that wake-up on: the lock is held, and the waiter
// behind it would only try, lose and queue again. w1 polls, and so joins
// again and again; w2 waits for wake-ups only (its polls are 20s apart).
// w2 must make no attempt between w1's win and w1's release.
func TestWinnerPassesNoWakeUpOn(t *testing.T) {
	mrs, clients := servers(t, 3)
	h := newClient(t, clients).NewMutex("hot")
	if _, err := h.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	own1, hooks1 := hookedClients(t, mrs)
	w1 := newClient(t, own1, WithRetryDelay(20*time.Millisecond), WithRetryJitter(0)).NewMutex("hot")
	got1 := async(func() error { _, err := w1.LockContext(t.Context()); return err })
	// Its third attempt follows its second join.
	waitFor(t, "w1 to poll twice", func() bool { return acquireCalls(hooks1[0]) >= 3 })
	own2, hooks2 := hookedClients(t, mrs)
	c2 := newClient(t, own2, WithRetryDelay(2*time.Second), WithRetryJitter(0))
	w2 := c2.NewMutex("hot")
	got2 := async(func() error { _, err := w2.LockContext(t.Context()); return err })
	waitFor(t, "w2 to queue", func() bool {
		for _, mr := range mrs {
			if !queuedOn(mr, h.key+queueSuffix, c2) {
				return false
			}
		}
		return true
	})
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
	h := newClient(t, clients).NewMutex("hot")
	if _, err := h.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	own, hooks := hookedClients(t, mrs)
	wc := newClient(t, own, WithRetryDelay(2*time.Second), WithRetryJitter(0))
	w := wc.NewMutex("hot")
	got := async(func() error { _, err := w.LockContext(t.Context()); return err })
	waitFor(t, "w to queue", func() bool {
		for _, mr := range mrs {
			if !queuedOn(mr, h.key+queueSuffix, wc) {
				return false
			}
		}
		return true
	})
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
