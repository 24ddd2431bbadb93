package redlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// holdingState is where a holding is in its one-way life:
// acquiring → held → lost or released, and lost → released at Unlock.
type holdingState uint8

const (
	acquiring holdingState = iota // its round is running
	held                          // a quorum granted it within its validity
	lost                          // no quorum confirmed it in time, or a quorum said it is gone
	released                      // Unlock began, or the attempt failed
)

// holding is one acquisition, from its round until Unlock. It owns all of
// its state: the watchdog and the rounds ask it before they act and tell it
// what they learned, and it decides. Once it is no longer held, nothing
// extends or writes its key again; it releases the key on every node that
// may hold it, after any extension or repair still in flight.
type holding struct {
	m      *Mutex
	value  string    // random, unique to this acquisition
	waiter string    // the id under which it waited in the lock's queue, or ""
	start  time.Time // start of the acquisition round: the validity counts from here
	heldAt time.Time // when the round was won; set by hold, read only after
	lead   time.Duration
	round  *round // the acquisition round, whose late grants it undoes

	mu      sync.Mutex // guards the fields below
	state   holdingState
	until   time.Time // end of validity
	token   uint64
	cause   error       // why it was lost
	endedAt time.Time   // when it stopped being held
	timer   *time.Timer // the Mutex's, which serves one holding at a time
	cancel  context.CancelCauseFunc
	unsure  []bool    // nodes where a repair may have landed unseen
	limit   time.Time // end of the maximum hold, or zero
	// endNow is closed when the final release begins, if it was put off
	// until the validity ends (see lose).
	endNow chan struct{}
	// The final release, run once, by Unlock or after a loss, whichever
	// comes first; a second caller waits on endWait, made only then.
	ending  bool
	endDone bool
	endOut  outcome
	endWait chan struct{}

	// expires is when held should end, in nanoseconds since epoch: the
	// deadline while held, never otherwise. heldContext reads it without
	// the lock.
	expires atomic.Int64
	// busy counts the extension and repair rounds in flight, which the
	// final release waits for. Only a held holding is admitted.
	busy sync.WaitGroup
	// observing counts the Lost event in delivery, which Unlock waits for
	// before it reports the release.
	observing sync.WaitGroup
	// told says that the Acquired event has been delivered; until then a
	// Lost event waits in pendingLost, and announce delivers it after the
	// Acquired. Both are guarded by mu.
	told        bool
	pendingLost *LostEvent
	ctx         heldContext
}

// newHolding starts an acquisition for m.
func (m *Mutex) newHolding(waiter string) *holding {
	h := &holding{m: m, value: newValue(), waiter: waiter, lead: m.cfg.drift() / 2}
	h.expires.Store(math.MaxInt64)
	return h
}

// acquire runs the acquisition round, waiting no longer than ctx allows.
// The nodes in skip are not asked.
func (h *holding) acquire(ctx context.Context, skip []error) outcome {
	m := h.m
	h.start = time.Now()
	h.round = m.client.launch(ctx, roundSpec{call: m.acquireCall(h.value), timeout: m.cfg.perNodeTimeout(), skip: skip, kind: acquireRound, holding: h, live: h.acquiringOrHeld})
	return h.round.wait(ctx, nil)
}

// acquireReplied hears a node's reply to the acquisition round. A reply
// that comes once the attempt failed or the holding ended is undone: the
// key is released at once, and a call whose fate is unknown is also
// remembered, in case the command itself lands later. A refusal needs no
// release, unless the round was won: the key may then be the holding's
// own, put back by a repair while the grant was on its way.
func (h *holding) acquireReplied(n *node, rep reply, late, won bool) {
	if !late || (rep.refused() && !won) || neverRan(rep.err) {
		return
	}
	if timedOut(rep.err) {
		// The node did not answer the grant in time: a release now would
		// most likely wait out the timeout too. The grant may land later;
		// it is released once the node answers.
		n.remember(h.m.key, h.value, h.m.cfg.perNodeTimeout())
		return
	}
	h.releaseNow(n)
	if maybeRan(rep.err) {
		// The grant itself may land later.
		n.remember(h.m.key, h.value, h.m.cfg.perNodeTimeout())
	}
}

// releaseNow releases the holding's key on n, from n's goroutine. If the
// release gets no answer, or an error, the key is remembered, to be
// released again once n answers.
func (h *holding) releaseNow(n *node) {
	timeout := h.m.cfg.perNodeTimeout()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if rep := h.undo(ctx, n); rep.err != nil {
		n.failed(rep.err)
		n.remember(h.m.key, h.value, timeout)
	}
}

// undo deletes the holding's key on n if it is still there, without waking
// a waiter: the lock was not released by its holder, and a waiter queued
// behind a real holder must not be woken by it.
func (h *holding) undo(ctx context.Context, n *node) reply {
	return h.m.prepareRelease(h.value, "", false).release(ctx, n)
}

// abandon gives up an attempt that failed: it releases, in the background,
// the nodes that granted it or whose answer is unknown; nodes that answer
// later release themselves (see acquireReplied).
func (h *holding) abandon() {
	h.mu.Lock()
	h.state = released
	h.mu.Unlock()
	release, unsure := h.round.abandon()
	if release == nil {
		return
	}
	c := h.m.client
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return
	}
	for i, n := range c.nodes {
		if !release[i] {
			continue
		}
		doubt := unsure != nil && unsure[i]
		started := n.start(h.m.cfg.perNodeTimeout(), func() {
			h.releaseNow(n)
			if doubt {
				n.remember(h.m.key, h.value, h.m.cfg.perNodeTimeout())
			}
		})
		if !started { // the node is hung: release it once it answers
			n.remember(h.m.key, h.value, h.m.cfg.perNodeTimeout())
		}
	}
}

// hold makes the holding held, with the validity that ends at until, and
// returns its held context, derived from ctx. The expiry timer and the
// watchdog start under the holding's lock, so that neither can act on it
// before both know of it. If the validity has already ended (the process
// paused, say), the holding is lost at once.
func (h *holding) hold(ctx context.Context, until time.Time, token uint64) context.Context {
	inner, cancel := context.WithCancelCause(ctx)
	h.ctx = heldContext{Context: inner, h: h}
	h.heldAt = time.Now()
	h.m.client.ends.Add(1) // Done when end finishes
	h.mu.Lock()
	h.state, h.until, h.token, h.cancel = held, until, token, cancel
	if limit := h.m.cfg.maxHold; limit > 0 {
		h.limit = h.start.Add(limit)
	}
	deadline := h.deadline()
	h.expires.Store(int64(deadline.Sub(epoch)))
	h.m.expiring.Store(h)
	h.timer = h.m.expiry
	h.timer.Reset(time.Until(deadline))
	watched := h.m.client.watchdog.add(h, h.start.Add(h.m.cfg.extendInterval()))
	h.mu.Unlock()
	if !watched {
		h.lose(LostClosed, fmt.Errorf("%w: %w", ErrLockLost, ErrClosed))
	}
	return &h.ctx
}

// deadline is when the holding stops being held unless an extension moves
// it: lead before the validity ends, or at the maximum hold if that comes
// first. h.mu is held.
func (h *holding) deadline() time.Time {
	deadline := h.until.Add(-h.lead)
	if !h.limit.IsZero() && h.limit.Before(deadline) {
		return h.limit
	}
	return deadline
}

// expire ends the holding if its validity is about to end with no quorum
// confirmed, or its maximum hold has passed, unless an extension has moved
// the deadline since the timer was set.
func (h *holding) expire() {
	h.mu.Lock()
	if h.state != held {
		h.mu.Unlock()
		return
	}
	now := time.Now()
	if left := h.deadline().Sub(now); left > 0 {
		h.timer.Reset(left)
		h.mu.Unlock()
		return
	}
	until := h.until
	h.mu.Unlock()
	if now.Before(until.Add(-h.lead)) {
		h.lose(LostMaxHold, fmt.Errorf("%w: held for its maximum of %v (WithMaxHold)", ErrLockLost, h.m.cfg.maxHold))
		return
	}
	h.lose(LostDeadline, fmt.Errorf("%w: no quorum confirmed it before its validity ended at %v", ErrLockLost, until.Format(time.RFC3339Nano)))
}

// lose ends a held holding with cause, for the reason why: the held context
// ends at once, and the key is released on every node in the background,
// once the rounds in flight for it are done. A holding that reached its
// maximum hold keeps its key until the end of its validity, or until Unlock
// or Close if they come first, so that a holder that checks held between
// steps has the rest of the validity to stop.
func (h *holding) lose(why LossCause, cause error) {
	keepKey := why == LostMaxHold
	h.mu.Lock()
	if h.state != held {
		h.mu.Unlock()
		return
	}
	h.state, h.cause = lost, cause
	h.stop()
	releaseAt := h.until
	if keepKey {
		h.endNow = make(chan struct{})
	}
	endNow := h.endNow
	heldFor := h.endedAt.Sub(h.heldAt)
	o := h.m.cfg.observer
	if o != nil && o.Lost != nil {
		h.observing.Add(1)
	}
	h.mu.Unlock()
	h.m.client.watchdog.remove(h)
	h.cancel(cause)
	level := slog.LevelWarn
	if errors.Is(cause, ErrClosed) {
		level = slog.LevelInfo
	}
	h.m.cfg.logger.Log(context.Background(), level, "redlock: lock lost", "lock", h.m.name, "cause", cause)
	// Counted in the Client's ends since hold.
	if keepKey {
		go h.endAt(releaseAt, endNow)
	} else {
		go h.end(context.Background())
	}
	if o != nil && o.Lost != nil {
		event := LostEvent{Name: h.m.name, Cause: why, Held: heldFor, Err: cause}
		h.mu.Lock()
		if !h.told {
			// The acquiring call has not told its Acquired yet: announce
			// delivers this after it.
			h.pendingLost = &event
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		defer h.observing.Done()
		observe(h.m.cfg.logger, "Lost", o.Lost, event)
	}
}

// announce delivers the holding's Acquired event, with acquired, and then
// the Lost event that came before it, if one did: the events of one
// acquisition come in order. The acquiring call calls it, where an
// observer is set, before it returns.
func (h *holding) announce(acquired func()) {
	acquired()
	h.mu.Lock()
	h.told = true
	lost := h.pendingLost
	h.pendingLost = nil
	h.mu.Unlock()
	if lost != nil {
		defer h.observing.Done()
		observe(h.m.cfg.logger, "Lost", h.m.cfg.observer.Lost, *lost)
	}
}

// lostAtRelease records that the release found the key gone from a quorum
// of nodes, though the holding was held when it began: the lock had been
// lost unnoticed.
func (h *holding) lostAtRelease(cause error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cause == nil {
		h.cause = cause
	}
}

// endAt makes the final release at the given time, the end of the
// validity, or at once if the Client closes; unless the release begins
// before then, at Unlock.
func (h *holding) endAt(at time.Time, endNow <-chan struct{}) {
	timer := time.NewTimer(time.Until(at))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-h.m.client.closingCh:
	case <-endNow:
		return
	}
	h.end(context.Background())
}

// stop records the end of being held: no expiry, no held context reading
// the validity. h.mu is held.
func (h *holding) stop() {
	h.endedAt = time.Now()
	h.expires.Store(math.MaxInt64)
	h.timer.Stop()
}

// unlock ends the holding for Unlock: it stops the watchdog for it, ends
// the held context, and releases the key on every node, after the rounds in
// flight for it are done. It returns what the release learned, and the
// cause if the holding had been lost.
func (h *holding) unlock(ctx context.Context) (outcome, error) {
	// A validity that ended unnoticed (the process paused, say) is a loss,
	// though the expiry timer has not fired yet.
	h.overdue()
	h.mu.Lock()
	was, cause := h.state, h.cause
	if was == held {
		h.state = released
		h.stop()
	}
	h.mu.Unlock()
	if was == held {
		h.m.client.watchdog.remove(h)
		h.cancel(nil)
	}
	return h.end(ctx), cause
}

// end releases the holding's key on every node, once: the second caller
// waits for the first, or until ctx is done. It waits for the extension
// and repair rounds in flight (each bounded by the node timeout), leaves
// the nodes whose grant is still in flight to the acquisition round, and
// remembers the nodes where a command of the holding may still land.
func (h *holding) end(ctx context.Context) (out outcome) {
	h.mu.Lock()
	if h.ending {
		return h.waitEnd(ctx)
	}
	h.ending = true
	if h.endNow != nil {
		close(h.endNow)
	}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.endDone, h.endOut = true, out
		if h.endWait != nil {
			close(h.endWait)
		}
		h.mu.Unlock()
		h.m.client.ends.Done()
	}()
	m := h.m
	h.busy.Wait()
	pending, unsure := h.round.handOver()
	h.mu.Lock()
	for i, u := range h.unsure {
		if u {
			unsure = setBit(unsure, i, len(m.client.nodes))
		}
	}
	h.mu.Unlock()
	timeout := m.cfg.perNodeTimeout()
	for i, u := range unsure {
		if u {
			m.client.nodes[i].remember(m.key, h.value, timeout)
		}
	}
	release := m.releaseCall(h.value, h.waiter, true)
	r := m.client.launch(ctx, roundSpec{call: release, timeout: timeout, skip: skipping(pending, errReleaseOnAnswer), kind: releaseRound, holding: h})
	return r.wait(ctx, nil)
}

// waitEnd waits for the final release begun by another caller, or until
// ctx is done, and returns what it learned. h.mu is held, and released.
func (h *holding) waitEnd(ctx context.Context) outcome {
	if h.endDone {
		defer h.mu.Unlock()
		return h.endOut
	}
	if h.endWait == nil {
		h.endWait = make(chan struct{})
	}
	wait := h.endWait
	h.mu.Unlock()
	select {
	case <-wait:
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.endOut
	case <-ctx.Done():
		return outcome{errs: fmt.Errorf("redlock: release still in flight: %w", ctx.Err())}
	}
}

// skipping is the skip of a round that does not call the nodes in bits,
// each with the reply error why.
func skipping(bits []bool, why error) []error {
	if bits == nil {
		return nil
	}
	skip := make([]error, len(bits))
	for i, b := range bits {
		if b {
			skip[i] = why
		}
	}
	return skip
}

// setBit sets bits[i], making bits n long if it is nil.
func setBit(bits []bool, i, n int) []bool {
	if bits == nil {
		bits = make([]bool, n)
	}
	bits[i] = true
	return bits
}

// releaseReplied hears a node's reply to the final release: a key that the
// release may not have deleted is remembered, to be released again.
func (h *holding) releaseReplied(n *node, rep reply) {
	if rep.err != nil {
		n.remember(h.m.key, h.value, h.m.cfg.perNodeTimeout())
	}
	if rep.unheard {
		h.m.client.wakeUnheard(n, "PUBLISH")
	}
}

// admit lets an extension or repair round start for the holding, if it is
// still held and its validity has not ended (the expiry timer may be late);
// the caller calls leave when the round is done.
func (h *holding) admit() bool {
	h.mu.Lock()
	if h.state == held && !h.expired() {
		h.busy.Add(1)
		h.mu.Unlock()
		return true
	}
	h.mu.Unlock()
	h.expire()
	return false
}

// expired reports whether the deadline has passed: the validity has ended,
// or is about to, or the maximum hold has passed; the expiry timer should
// have fired. h.mu is held.
func (h *holding) expired() bool {
	return !time.Now().Before(h.deadline())
}

func (h *holding) leave() { h.busy.Done() }

// extended moves the validity on to until, if the holding is still held
// and until is later. It returns the validity's end, and whether the
// holding is still held. A confirmation that comes once the validity has
// ended is too late: the lock was lost, whether or not the expiry timer
// has fired yet, and is not taken back.
func (h *holding) extended(until time.Time) (time.Time, bool) {
	h.mu.Lock()
	if h.state == held && h.expired() {
		h.mu.Unlock()
		h.expire()
		return time.Time{}, false
	}
	defer h.mu.Unlock()
	if h.state != held {
		return time.Time{}, false
	}
	if until.After(h.until) {
		h.until = until
		h.expires.Store(int64(h.deadline().Sub(epoch)))
	}
	return h.until, true
}

// acquiringOrHeld reports whether the holding has not ended: its grants
// may still be sent.
func (h *holding) acquiringOrHeld() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state == acquiring || h.state == held
}

// lostCause returns why the holding was lost, or nil if it was not.
func (h *holding) lostCause() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cause
}

// isHeld reports whether the holding is still held.
func (h *holding) isHeld() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state == held
}

// repairReplied hears a node's reply to a repair. A repair that lands once
// the holding is no longer held is released at once; one whose fate is
// unknown is remembered, now if the holding has ended, or at its end.
func (h *holding) repairReplied(n *node, rep reply) {
	// A client that resends by itself can turn a repair that landed into
	// a refusal.
	unsure := maybeRan(rep.err) || (n.retries && rep.refused())
	h.mu.Lock()
	ended := h.state != held
	if unsure && !ended {
		h.unsure = setBit(h.unsure, n.index, len(h.m.client.nodes))
	}
	h.mu.Unlock()
	switch {
	case ended && rep.ok:
		h.releaseNow(n)
	case ended && unsure:
		n.remember(h.m.key, h.value, h.m.cfg.perNodeTimeout())
	}
}

// validity returns the end of the validity and the token while the holding
// is held, and zeros otherwise.
func (h *holding) validity() (time.Time, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state != held {
		return time.Time{}, 0
	}
	return h.until, h.token
}

// heldContext is the context LockContext returns. Its Err and Done also
// look at the lock's validity: once the validity has ended, Err is not nil
// and Done is closed even if the expiry timer has not fired yet, as happens
// to a process that wakes from a pause longer than the validity. Contexts
// derived from it after that are born done.
type heldContext struct {
	context.Context
	h *holding
}

func (c *heldContext) Err() error {
	c.h.overdue()
	return c.Context.Err()
}

func (c *heldContext) Done() <-chan struct{} {
	c.h.overdue()
	return c.Context.Done()
}

// overdue ends the holding if its validity has ended and its timer has not
// fired yet.
func (h *holding) overdue() {
	if int64(time.Since(epoch)) >= h.expires.Load() {
		h.expire()
	}
}
