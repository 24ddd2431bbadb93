package redlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"strings"
	"sync/atomic"
	"time"
)

// retryPolicy is how a waiter spaces its attempts, and so how long its
// place in the lock's queue must last without it. enqueue.lua counts a
// queued waiter as alive for aliveTTL after each of its calls (its score in
// the lock's set of live waiters) and keeps the queue for queueTTL;
// release.lua and status.lua skip waiters whose time has passed. Both TTLs are derived here, from the delays that space the
// calls which refresh them, so that a change of policy changes them too.
type retryPolicy struct {
	delay       time.Duration // base delay between attempts
	jitter      time.Duration // upper bound of the random delay added to each
	nodeTimeout time.Duration // how long each attempt and queue call may take
	ttl         time.Duration // the lock's TTL
}

// queuedPollFactor is how many retry delays a waiter waits between attempts
// while it is queued behind a holder: the holder's release wakes it by name,
// so polling is only the fallback for a lost wake-up, or a holder that died
// and whose key must expire. Each poll costs an attempt and a queue refresh
// on every node.
const queuedPollFactor = 10

func newRetryPolicy(c *config) retryPolicy {
	return retryPolicy{delay: c.retryDelay, jitter: c.retryJitter, nodeTimeout: c.perNodeTimeout(), ttl: c.ttl}
}

// next is the delay before the next attempt: the base delay plus jitter,
// times queuedPollFactor while queued behind a holder that will wake the
// waiter.
func (p retryPolicy) next(queued bool) time.Duration {
	delay := p.delay
	if p.jitter > 0 {
		delay += mathrand.N(p.jitter)
	}
	if queued {
		delay *= queuedPollFactor
	}
	return delay
}

// longestPoll is the longest delay between a queued waiter's calls: its
// longest wait, then an attempt and a queue call.
func (p retryPolicy) longestPoll() time.Duration {
	return queuedPollFactor*(p.delay+p.jitter) + 2*p.nodeTimeout
}

// aliveTTL is how long a queued waiter counts as alive without calling
// again: three of its longest polls. A release skips the ids of waiters
// whose time has passed: their process died without leaving the queue.
func (p retryPolicy) aliveTTL() time.Duration { return 3 * p.longestPoll() }

// queueTTL is how long a lock's queue outlives its last change: long enough
// for waiters that poll to keep their place, short enough that it does not
// linger once nobody waits.
func (p retryPolicy) queueTTL() time.Duration {
	return max(4*p.ttl, 20*(p.delay+p.jitter))
}

// contender is what a waiter acquires: a Mutex's lock or a Semaphore's
// permit. The waiter owns the retry policy and the place in the queue; the
// contender makes the attempts and the queue calls on its own keys.
type contender interface {
	// attempt makes one acquisition attempt, waiting for it no longer than
	// waitCtx allows; held derives from ctx. waiter is the id the caller
	// queues under, or "". Its error names the attempt's reasons, and
	// permanent says that retrying cannot fix them.
	attempt(waitCtx, ctx context.Context, waiter string) (held context.Context, permanent bool, err error)
	// joinQueue puts waiter in the lock's queue on the nodes, or keeps it
	// there, as mode says (see enqueue), and tells what it learned.
	joinQueue(ctx context.Context, waiter, mode string) queueView
	// leaveQueue takes waiter out of the lock's queue: a waiter that gave
	// up, or one that won (acquired the lock while it was queued). Where a
	// release took it out of the queue to wake it, a waiter that may not
	// have used that wake-up then wakes the next live waiter, releasing
	// nothing: one that gave up, or won a permit without it.
	leaveQueue(waiter string, won bool)
	// dequeueOn takes a winner out of the lock's queue on the nodes that
	// did not wake it (woke is indexed by node), passing nothing on, and
	// does not wait for it.
	dequeueOn(waiter string, woke []bool)
}

// queueView is what a waiter learns as it joins the queue.
type queueView struct {
	// free: no holder has the lock (or, for a Semaphore, every permit) on
	// a quorum of nodes, so an attempt now may win: a release may have
	// come before the waiter was queued to hear of it.
	free bool
	// wakes: the holders are this package's, whose releases wake the
	// waiter by name; other Redlock clients (see WithExactKey) do not.
	wakes bool
}

// waiter is one acquiring call: the retry policy around a contender's
// attempt. TryLockContext and TryAcquire are waiters that make one attempt.
// After a first failed attempt a waiter that waits joins the lock's queue on
// every node, under its own id; a release wakes the waiter at the head of
// the queue by that id, so that one release costs one attempt, not one per
// waiter. It polls as well, for wake-ups that are lost.
type waiter struct {
	lock        contender
	client      *Client
	retry       retryPolicy
	nodeTimeout time.Duration
	logger      *slog.Logger
	name        string // the lock's, for logs
	// queued is the lock's flag, set when its last release woke a queued
	// waiter: the next waiter then queues behind it instead of trying
	// first, so that a releaser does not snatch the lock back from the
	// waiter it woke.
	queued *atomic.Bool

	ctx     context.Context // what held derives from
	waitCtx context.Context // what bounds the wait
	once    bool            // one attempt

	id       string    // the id it queues under; "" until it first joins
	listener *listener // hears its wake-ups once it has an id
	hears    bool      // a quorum of nodes listens for its wake-ups
	woken    bool      // the last attempt followed a release that named it
	// joined: it joined the queue since a release last named it, and so
	// is still in the queue, where no release took it out.
	joined bool
	// joins counts its joins. After more than one, a message that names
	// it may be a stale copy of an earlier release's (one per node), sent
	// before it joined again: it may still be in the queue.
	joins    int
	retried  bool  // the last attempt was made at once, without waiting
	logged   bool  // a node error of this wait was logged at Warn
	last     error // the last attempt's error
	attempts int   // attempts made
}

// handoffGrace is how long a releaser that locks again waits for the waiter
// it woke to take the lock, when the lock looks free: several round trips.
const handoffGrace = 5 * time.Millisecond

// newWaiter returns the Mutex's waiter for one call.
func (m *Mutex) newWaiter(ctx, waitCtx context.Context, once bool) *waiter {
	return &waiter{lock: m, client: m.client, retry: m.retry, nodeTimeout: m.spec.nodeTimeout, logger: m.cfg.logger, name: m.name,
		queued: &m.queued, ctx: ctx, waitCtx: waitCtx, once: once}
}

// acquire acquires the lock for LockContext, or with once for
// TryLockContext, waiting until waitCtx is done; held derives from ctx. It
// tells the observer how the call ended, an acquisition before the Client
// can close.
func (m *Mutex) acquire(ctx, waitCtx context.Context, once bool) (context.Context, error) {
	return m.acquireBy(m.newWaiter(ctx, waitCtx, once))
}

// acquireBy acquires the lock with w, as acquire does.
func (m *Mutex) acquireBy(w *waiter) (context.Context, error) {
	ctx := w.ctx
	var start time.Time
	if m.spec.events.on() {
		start = time.Now()
	}
	held, err := m.lockAndWait(w)
	switch {
	case !m.spec.events.on():
	case err == nil:
		// The lease from held, not m.current: another goroutine may
		// already have unlocked the Mutex.
		l := held.(*heldContext).l
		l.order.acquired(&m.spec.events, func() {
			_, token := l.validity()
			m.spec.events.acquired(ctx, start, w.attempts, token)
		})
	default:
		m.spec.events.notAcquired(ctx, start, w.attempts, err)
	}
	return held, err
}

// lockAndWait takes the local lock, then runs w for the remote one, and
// holds the local lock on success only.
func (m *Mutex) lockAndWait(w *waiter) (context.Context, error) {
	if err := m.usable(); err != nil {
		return nil, err
	}
	if err := m.lockLocal(w.waitCtx, w.once); err != nil {
		return nil, err
	}
	held, err := w.run()
	if err != nil {
		<-m.local
	}
	return held, err
}

// run makes the attempts, as a call of the Client that Close waits for.
func (w *waiter) run() (context.Context, error) {
	if !w.client.enterCall() {
		return nil, ErrClosed
	}
	defer w.client.exitCall()
	held, err := w.wait()
	w.close(err == nil)
	return held, err
}

// lockLocal takes the Mutex's local lock: at once or not at all for one
// attempt, or waiting until waitCtx ends or the Client closes. A wait that
// ended says taken only while another goroutine holds the Mutex.
func (m *Mutex) lockLocal(waitCtx context.Context, once bool) error {
	if waitCtx.Err() != nil {
		return waitEnded(waitCtx, nil)
	}
	if once {
		select {
		case m.local <- struct{}{}:
			return nil
		default:
			return errTakenHere
		}
	}
	select {
	case m.local <- struct{}{}:
		return nil
	case <-waitCtx.Done():
		return waitEnded(waitCtx, m.localReason())
	case <-m.client.closing:
		return ErrClosed
	}
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
// cannot fix, the waiter made its one attempt, or the wait ends.
func (w *waiter) wait() (context.Context, error) {
	if !w.once && w.queued.Load() {
		w.queueBehindWoken()
	}
	for {
		if err := w.ended(); err != nil {
			return nil, err
		}
		w.attempts++
		held, permanent, err := w.lock.attempt(w.waitCtx, w.ctx, w.id)
		switch {
		case err == nil:
			return held, nil
		case w.once && w.waitCtx.Err() != nil:
			return nil, waitEnded(w.waitCtx, err)
		case permanent || w.once:
			return nil, err
		}
		if err != ErrNotAcquired || w.last == nil {
			w.last = err // a round the wait's end cut short says nothing new
		}
		if w.waitCtx.Err() != nil || w.client.isClosing() {
			continue // not a failure to retry: the wait is over
		}
		w.logRetry(err)
		if delay, now := w.join(); !now {
			w.woken = w.await(delay)
		}
	}
}

// ended returns the error that ends the wait, if it has ended: with
// ctx.Err() whenever the wait's context has ended, Close or not.
func (w *waiter) ended() error {
	if w.client.isClosing() {
		if w.waitCtx.Err() != nil {
			return errors.Join(ErrClosed, waitEnded(w.waitCtx, w.last))
		}
		return errors.Join(ErrClosed, w.last)
	}
	if w.waitCtx.Err() != nil {
		return waitEnded(w.waitCtx, w.last)
	}
	return nil
}

// queueBehindWoken queues the waiter behind the one the lock's last
// release woke, rather than race it. If the lock looks free, that waiter
// may not have tried yet, or may be gone: give it a moment, then try.
func (w *waiter) queueBehindWoken() {
	w.listen()
	delay := handoffGrace
	view := w.lock.joinQueue(w.waitCtx, w.id, enqueueLast)
	w.joined = true
	w.joins++
	if !view.free {
		delay = w.pollDelay(view)
	}
	w.woken = w.await(delay)
}

// listen gives the waiter its id and starts hearing its wake-ups.
func (w *waiter) listen() {
	w.id = w.client.notifier.newWaiter()
	w.listener = w.client.notifier.listen(w.id)
	w.hears = w.listener.ready(w.waitCtx, w.nodeTimeout)
}

// join puts the waiter in the lock's queue, or keeps its place: back at the
// front if a release picked it and it still lost. It says how long to wait
// before the next attempt, or to make it at once: when no single holder has
// the lock on a quorum of nodes, it may have been released before the
// waiter was queued to hear of it, or it was split between contenders whose
// keys are on their way out.
//
// A release publishes its wake-up on every node, so a waiter hears it up to
// once per node, and the copies that come in while its attempt runs are
// stale once it lost. join takes the one pending (a listener keeps one):
// what it says, that a release came, the queue call reads for itself. If
// the lock still looks free, the waiter tries again at once; if not, the
// lock was taken again, and the waiter waits for that holder's release
// instead of making an attempt that must lose.
func (w *waiter) join() (delay time.Duration, now bool) {
	mode := enqueueLast
	heard := false
	if w.id == "" {
		w.listen()
	} else {
		heard = w.listener.take()
		if w.woken || heard {
			// A release popped it on some node: back to the front.
			mode = enqueueFirst
		}
	}
	w.woken = false
	view := w.lock.joinQueue(w.waitCtx, w.id, mode)
	w.joined = true
	w.joins++
	if view.free && (!w.retried || heard) {
		w.retried = true
		return 0, true
	}
	w.retried = false
	return w.pollDelay(view), false
}

// pollDelay is how long to wait for a wake-up before trying again, given
// what the queue call learned: a retry delay, or ten while the holders are
// this package's, whose releases will wake the waiter.
func (w *waiter) pollDelay(view queueView) time.Duration {
	return w.retry.next(view.wakes && w.hears)
}

// await waits until a release names the waiter, delay passes, the wait ends
// or the Client closes. It reports whether the waiter was woken by name.
func (w *waiter) await(delay time.Duration) bool {
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-w.listener.C:
		w.joined = false // the release took it out of the queue
		w.awaitCopies()
		return true
	case <-timer.C:
		return false
	case <-w.waitCtx.Done():
		return false
	case <-w.client.closing:
		return false
	}
}

// copyGrace bounds how long a woken waiter waits for the other nodes'
// copies of its wake-up.
const copyGrace = 2 * time.Millisecond

// awaitCopies waits, once a wake-up came, until a quorum of nodes have sent
// theirs, for copyGrace at most: each copy comes from a node that has run
// the release, so that the attempt that follows finds the lock free on a
// quorum, rather than losing to the releases still on their way and
// queueing again. The copies of one release come within a round trip of
// each other; a waiter that heads the queue of fewer nodes than a quorum
// tries after the grace.
func (w *waiter) awaitCopies() {
	q := quorum(len(w.client.nodes))
	if _, n := w.listener.wokenBy(); n >= q {
		return
	}
	grace := time.NewTimer(copyGrace)
	defer grace.Stop()
	for {
		select {
		case <-w.listener.C:
			if _, n := w.listener.wokenBy(); n >= q {
				return
			}
		case <-grace.C:
			return
		case <-w.waitCtx.Done():
			return
		case <-w.client.closing:
			return
		}
	}
}

// close leaves the queue and stops listening. A waiter that gives up
// leaves, and so does one that acquired the lock while still queued, so
// that Status does not count it and other holders' releases do not wake
// it. The nodes, not what the waiter heard, say whether a release woke it:
// a wake-up may still be on its way, and one it did not use (it gave up, or
// won a permit without it) is passed on to the next live waiter.
//
// A winner that was woken needs no leave, waited for, if it joined once
// and a quorum of nodes woke it since, each of which took it out of its
// queue to wake it. A Semaphore's winner tells the others, a minority,
// without waiting: its holders, left queued on different nodes, would
// count for Status and absorb wake-ups meant for the waiters behind (a
// Mutex's, see its dequeueOn, need not). After more than one join, a copy
// of an earlier release's wake-up, sent before it joined again, cannot be
// told from a new one.
func (w *waiter) close(acquired bool) {
	if w.listener == nil {
		return
	}
	woke, count := w.listener.wokenBy()
	switch {
	case !acquired || w.joined || w.joins > 1 || count < quorum(len(w.client.nodes)):
		w.lock.leaveQueue(w.id, acquired)
	case count < len(w.client.nodes):
		w.lock.dequeueOn(w.id, woke)
	}
	w.listener.unregister()
}

// joinQueue puts waiter in the lock's queue (or keeps it there) on the
// nodes. The lock is not free if a quorum of nodes says that one holder
// has it, in which case there is no point trying before it is released.
func (m *Mutex) joinQueue(ctx context.Context, waiter, mode string) queueView {
	holder := m.queueHolder(ctx, waiter, mode)
	return queueView{free: holder == "", wakes: strings.HasPrefix(holder, valuePrefix)}
}

// queueHolder is joinQueue's round: it returns the holder's value if a
// quorum of nodes says that one holder has the lock, "" if not.
func (m *Mutex) queueHolder(ctx context.Context, waiter, mode string) (holder string) {
	c := m.client
	call := m.kind.enqueue(waiter, mode, m.retry.aliveTTL(), m.retry.queueTTL())
	r := launch(c, ctx, roundSpec[string]{call: call, timeout: m.spec.nodeTimeout})
	var holders []string // the value each answering node named
	unanswered := len(c.nodes)
	r.wait(ctx, func(_ int, rep reply[string], _ int) bool {
		unanswered--
		if rep.ok {
			holders = append(holders, rep.value)
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

// leaveQueue takes a waiter out of the queue, waiting for a quorum at
// most; the other nodes finish in the background. One that gave up passes
// on the wake-ups that releases sent it (see leaveCall). A winner holds the
// lock: every wake-up it was sent is used, since a release of the lock's is
// what it won, and passing one on would only send the next waiter into an
// attempt that must lose.
func (m *Mutex) leaveQueue(waiter string, won bool) {
	call := m.kind.leave(waiter, m.retry.aliveTTL(), m.retry.queueTTL())
	if won {
		call = m.kind.dequeue(waiter, m.retry.queueTTL())
	}
	ctx := context.Background()
	launch(m.client, ctx, roundSpec[none]{call: call, timeout: m.spec.nodeTimeout, anyNode: true}).wait(ctx, nil)
}

// dequeueOn does nothing: a Mutex's winner left queued on a minority of
// nodes is counted by no quorum of Status, and absorbs no wake-up, as no
// other holder releases the lock before the winner's own release, which
// takes its id out of every queue. The node that did not wake it has most
// often done so, its copy of the wake-up still on its way.
func (m *Mutex) dequeueOn(string, []bool) {}

// dequeueSkipping launches call on the nodes not in woke, and does not wait
// for it: the calls are on their way when it returns.
func dequeueSkipping(c *Client, call nodeCall[none], timeout time.Duration, woke []bool) {
	launch(c, context.Background(), roundSpec[none]{call: call, timeout: timeout, anyNode: true, skip: skipping(woke, errWokeIt)})
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
	w.logger.Log(context.Background(), level, "redlock: attempt failed; retrying", "lock", w.name, "error", err)
}
