package redlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"strings"
	"time"
)

// waiter is one LockContext call waiting for the lock: the retry policy
// around Mutex.attempt. After a first failed attempt it joins the lock's
// queue on every node, under its own id; a release wakes the waiter at the
// head of the queue by that id, so that one release costs one attempt, not
// one per waiter. It polls as well, for wake-ups that are lost.
type waiter struct {
	m       *Mutex
	ctx     context.Context // what held derives from
	waitCtx context.Context // what bounds the wait

	id       string    // the id it queues under; "" until it first joins
	listener *listener // hears its wake-ups once it has an id
	hears    bool      // a quorum of nodes listens for its wake-ups
	woken    bool      // the last attempt followed a release that named it
	retried  bool      // the last attempt was made at once, without waiting
	logged   bool      // a node error of this wait was logged at Warn
	last     error     // the last attempt's error
	attempts int       // attempts made
}

// queuedPollFactor is how many retry delays a waiter waits between attempts
// while it is queued behind a holder: the holder's release wakes it by name,
// so polling is only the fallback for a lost wake-up, or a holder that died
// and whose key must expire. Each poll costs an attempt and a queue refresh
// on every node.
const queuedPollFactor = 10

// handoffGrace is how long a releaser that locks again waits for the waiter
// it woke to take the lock, when the lock looks free: several round trips.
const handoffGrace = 5 * time.Millisecond

// lock acquires the lock, waiting until waitCtx is done; held derives from
// ctx.
func (m *Mutex) lock(ctx, waitCtx context.Context) (context.Context, error) {
	if m.cfg.observer == nil {
		held, _, err := m.waitFor(ctx, waitCtx, time.Time{})
		return held, err
	}
	start := time.Now()
	held, attempts, err := m.waitFor(ctx, waitCtx, start)
	if err != nil {
		m.observeAcquisition(ctx, start, attempts, err)
	}
	return held, err
}

// waitFor is lock, which began at start: it tells the observer of an
// acquisition before the Client can close, and leaves a failure to lock.
// It also says how many attempts it made.
func (m *Mutex) waitFor(ctx, waitCtx context.Context, start time.Time) (context.Context, int, error) {
	if err := m.usable(); err != nil {
		return nil, 0, err
	}
	if waitCtx.Err() != nil {
		return nil, 0, waitEnded(waitCtx, nil)
	}
	select {
	case m.local <- struct{}{}:
	case <-waitCtx.Done():
		return nil, 0, waitEnded(waitCtx, m.localReason())
	case <-m.client.closingCh:
		return nil, 0, ErrClosed
	}
	if !m.client.enter() {
		<-m.local
		return nil, 0, ErrClosed
	}
	defer m.client.leave()
	w := &waiter{m: m, ctx: ctx, waitCtx: waitCtx}
	held, err := w.wait()
	w.close(err == nil)
	if err != nil {
		<-m.local
	} else if m.cfg.observer != nil {
		m.observeAcquisition(ctx, start, w.attempts, nil)
	}
	return held, w.attempts, err
}

// localReason is the reason of a wait for the local lock that ended:
// errTakenHere while another goroutine holds it, nil if it is free (the
// wait ended as the lock came free, and the error must not say taken).
func (m *Mutex) localReason() error {
	select {
	case m.local <- struct{}{}:
		<-m.local
		return nil
	default:
		return errTakenHere
	}
}

// wait makes attempts until one succeeds, one fails in a way retrying
// cannot fix, or the wait ends.
func (w *waiter) wait() (context.Context, error) {
	m := w.m
	if m.queued.Load() {
		w.queueBehindWoken()
	}
	for {
		if err := w.ended(); err != nil {
			return nil, err
		}
		w.attempts++
		held, permanent, err := m.attempt(w.waitCtx, w.ctx, w.id)
		if err == nil {
			return held, nil
		}
		if permanent {
			return nil, err
		}
		if err != ErrNotAcquired || w.last == nil {
			w.last = err // a round the wait's end cut short says nothing new
		}
		if w.waitCtx.Err() != nil || m.client.isClosing() {
			continue // not a failure to retry: the wait is over
		}
		w.logRetry(err)
		if delay, now := w.join(); !now {
			w.woken = w.await(delay)
		}
	}
}

// ended returns the error that ends the wait, if it has ended.
func (w *waiter) ended() error {
	if w.m.client.isClosing() {
		return errors.Join(ErrClosed, w.last)
	}
	if w.waitCtx.Err() != nil {
		return waitEnded(w.waitCtx, w.last)
	}
	return nil
}

// queueBehindWoken queues the waiter behind the one this Mutex's last
// release woke, rather than race it. If the lock looks free, that waiter
// may not have tried yet, or may be gone: give it a moment, then try.
func (w *waiter) queueBehindWoken() {
	w.listen()
	delay := handoffGrace
	if holder := w.m.joinQueue(w.waitCtx, w.id, enqueueLast); holder != "" {
		delay = w.pollDelay(holder)
	}
	w.woken = w.await(delay)
}

// listen gives the waiter its id and starts hearing its wake-ups.
func (w *waiter) listen() {
	w.id = w.m.client.notifier.newWaiter()
	w.listener = w.m.client.notifier.listen(w.id)
	w.hears = w.listener.ready(w.waitCtx, w.m.cfg.perNodeTimeout())
}

// join puts the waiter in the lock's queue, or keeps its place: back at the
// front if a release picked it and it still lost. It says how long to wait
// before the next attempt, or to make it at once: when no single holder has
// the lock on a quorum of nodes, it may have been released before the
// waiter was queued to hear of it, or it was split between contenders whose
// keys are on their way out.
func (w *waiter) join() (delay time.Duration, now bool) {
	mode := enqueueLast
	if w.id == "" {
		w.listen()
	} else if w.woken {
		mode = enqueueFirst
	}
	w.woken = false
	holder := w.m.joinQueue(w.waitCtx, w.id, mode)
	if holder == "" && !w.retried {
		w.retried = true
		return 0, true
	}
	w.retried = false
	return w.pollDelay(holder), false
}

// pollDelay is how long to wait for a wake-up before trying again, given
// the value that holds the lock on a quorum of nodes, if any: a retry delay,
// or ten while the holder is one of this package's, whose release will wake
// the waiter. Other Redlock clients (see WithExactKey) do not.
func (w *waiter) pollDelay(holder string) time.Duration {
	delay := w.m.retryDelay()
	if strings.HasPrefix(holder, valuePrefix) && w.hears {
		delay *= queuedPollFactor
	}
	return delay
}

// await waits until a release names the waiter, delay passes, the wait ends
// or the Client closes. It reports whether the waiter was woken by name.
func (w *waiter) await(delay time.Duration) bool {
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-w.listener.C:
		return true
	case <-timer.C:
		return false
	case <-w.waitCtx.Done():
		return false
	case <-w.m.client.closingCh:
		return false
	}
}

// close stops listening and, unless the waiter acquired the lock (whose
// release takes its id out of the queue), leaves the queue.
func (w *waiter) close(acquired bool) {
	if w.listener == nil {
		return
	}
	w.listener.stop()
	if !acquired {
		w.m.leaveQueue(w.id)
	}
}

// queueTTL is how long a lock's queue outlives its last change: long enough
// for waiters that poll to keep their place, short enough that it does not
// linger once nobody waits.
func (m *Mutex) queueTTL() time.Duration {
	return max(4*m.cfg.ttl, 20*(m.cfg.retryDelay+m.cfg.retryJitter))
}

// aliveTTL is how long a queued waiter counts as alive without calling
// again: three of its polls, each with an attempt and a queue call. A
// release skips the ids of waiters whose mark has expired: their process
// died without leaving the queue.
func (m *Mutex) aliveTTL() time.Duration {
	return 3 * (queuedPollFactor*(m.cfg.retryDelay+m.cfg.retryJitter) + 2*m.cfg.perNodeTimeout())
}

// joinQueue puts waiter in the lock's queue (or keeps it there) on the
// nodes. It returns the holder's value if a quorum of nodes says that one
// holder has the lock, in which case there is no point trying before it is
// released; "" if not.
func (m *Mutex) joinQueue(ctx context.Context, waiter, mode string) (holder string) {
	c := m.client
	r := c.launch(ctx, roundSpec{call: m.enqueueCall(waiter, mode), timeout: m.cfg.perNodeTimeout()})
	var holders []string // the value each answering node named
	unanswered := len(c.nodes)
	r.wait(ctx, func(_ int, rep reply, _ int) bool {
		unanswered--
		if rep.ok {
			holders = append(holders, rep.holder)
		}
		most, value := mostCommon(holders)
		if most >= quorum(len(c.nodes)) {
			holder = value
		}
		return holder != "" || most+unanswered < quorum(len(c.nodes))
	})
	return holder
}

// mostCommon returns the most common non-empty value, and its count.
func mostCommon(values []string) (count int, value string) {
	for i, v := range values {
		if v == "" {
			continue
		}
		n := 0
		for _, u := range values[i:] {
			if u == v {
				n++
			}
		}
		if n > count {
			count, value = n, v
		}
	}
	return count, value
}

// leaveQueue takes a waiter that gave up out of the queue. It waits for a
// quorum at most; the other nodes finish in the background.
func (m *Mutex) leaveQueue(waiter string) {
	m.client.fanOut(context.Background(), m.cfg.perNodeTimeout(), m.enqueueCall(waiter, dequeue))
}

// waitEnded is the error of a wait that ctx ended; last is the error of the
// last attempt, which says why it failed, or nil.
func waitEnded(ctx context.Context, last error) error {
	err := fmt.Errorf("%w: %w", ErrNotAcquired, ctx.Err())
	if cause := context.Cause(ctx); cause != ctx.Err() {
		err = fmt.Errorf("%w: %w", err, cause)
	}
	if last != nil && last != ErrNotAcquired {
		err = fmt.Errorf("%w; last attempt: %w", err, last)
	}
	return err
}

// logRetry logs a failed attempt's node errors: the first of a wait at Warn,
// later ones at Debug. A lock taken by another holder is not logged.
func (w *waiter) logRetry(err error) {
	var nodeErr *NodeError
	level := slog.LevelDebug
	if errors.As(err, &nodeErr) && !w.logged {
		level = slog.LevelWarn
		w.logged = true
	}
	w.m.cfg.logger.Log(context.Background(), level, "redlock: attempt failed; retrying", "lock", w.m.name, "error", err)
}

func (m *Mutex) retryDelay() time.Duration {
	delay := m.cfg.retryDelay
	if m.cfg.retryJitter > 0 {
		delay += mathrand.N(m.cfg.retryJitter)
	}
	return delay
}
