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

// A lease is one acquisition over the nodes, of any kind of lock: a
// Mutex's holding, a Semaphore's permit, an Election's term. It knows
// nothing of the kind, whose calls its spec carries (see leaseKind), and
// owns everything the Lifecycle section of DESIGN.md promises: the round and
// its late grants, the validity and the timer that ends it, the held
// context, the watchdog's extensions and repairs, and the release.

// leaseState is where a lease is in its one-way life:
// acquiring → held → lost or released.
type leaseState uint8

const (
	acquiring leaseState = iota // its round is running
	held                        // a quorum granted it within its validity
	lost                        // no quorum confirmed it in time, or a quorum said it is gone
	released                    // the release began, or the attempt failed
)

// leaseSpec is what every lease of one lock shares, fixed when the lock is
// made; nothing changes it after.
type leaseSpec struct {
	client      *Client
	kind        leaseKind
	name        string // the lock's name, for logs and events
	ttl         time.Duration
	drift       time.Duration // allowed for over one TTL: ttl×factor + 2ms
	interval    time.Duration // between extensions
	nodeTimeout time.Duration
	maxHold     time.Duration // 0: no limit
	repair      bool          // the watchdog puts the key back on nodes that lost it
	logger      *slog.Logger
	events      events
}

// lead is how long before the end of its validity a lease stops being held:
// half the drift, so that its holder hears of the loss while no other
// holder can have the lock yet.
func (s *leaseSpec) lead() time.Duration { return s.drift / 2 }

// validityEnd is the end of the validity confirmed by a round that started
// at start.
func (s *leaseSpec) validityEnd(start time.Time) time.Time {
	return validityEnd(start, s.ttl, s.drift)
}

// lease is one acquisition, from its round until its release. It owns all
// of its state: the watchdog and the rounds ask it before they act and tell
// it what they learned, and it decides. Once it is no longer held, nothing
// extends or writes its key again; it releases the key on every node that
// may hold it, after any extension or repair still in flight.
type lease struct {
	spec   *leaseSpec
	value  string    // random, unique to this acquisition
	waiter string    // the id under which it waited in the lock's queue, or ""
	start  time.Time // start of the acquisition round: the validity counts from here
	heldAt time.Time // when the round was won; set by hold, read only after
	round  *round[uint64]

	mu        sync.Mutex // guards the fields below
	state     leaseState
	until     time.Time // end of validity
	token     uint64
	cause     error       // why it was lost
	disowned  error       // why a node disowned it before it was held (see disown)
	stoppedAt time.Time   // when it stopped being held
	timer     *leaseTimer // its expiry timer, while held
	cancel    context.CancelCauseFunc
	unsure    []bool // nodes where a repair may have landed unseen
	refusedBy []bool // nodes that said in an extension round that they lost the key, to repair
	// wakeOnUndo: the attempt, abandoned, may have had its key on a
	// quorum; undoing its grants wakes waiters (see abandon).
	wakeOnUndo bool
	limit      time.Time // end of the maximum hold, or zero
	// releaseEarly is closed when the final release begins, if it was put
	// off until the validity ends (see lose).
	releaseEarly chan struct{}
	final        finalRelease

	// deadlineNanos is when held should end, in nanoseconds since epoch:
	// the deadline while held, never otherwise. heldContext reads it
	// without the lock.
	deadlineNanos atomic.Int64
	// busy counts the extension and repair rounds in flight, which the
	// final release waits for. Only a held lease is admitted.
	busy  sync.WaitGroup
	order eventOrder
	ctx   heldContext
}

// noteRefusal records that node i of nodes said, in an extension round,
// that it no longer has the key: the watchdog repairs it after the next
// won round, if this one's wait had been decided without its answer.
func (l *lease) noteRefusal(i, nodes int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refusedBy = setBit(l.refusedBy, i, nodes)
}

// takeRefusals returns the nodes noteRefusal recorded, and forgets them.
func (l *lease) takeRefusals() []bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	refused := l.refusedBy
	l.refusedBy = nil
	return refused
}

// finalRelease is a lease's release on every node, made once: by its
// holder's release or after a loss, whichever comes first. A second caller
// waits for the first. It is guarded by the lease's mu.
type finalRelease struct {
	begun    bool
	finished bool
	waiting  chan struct{} // made by a second caller; closed when it finished
	out      outcome[releaseReport]
	// lostFound is the loss the holder's release found: a quorum said the
	// key was gone, though the lease was held when the release began.
	lostFound error
}

// newLease starts an acquisition for spec, whose waiter queued as waiter.
func newLease(spec *leaseSpec, waiter string) *lease {
	l := &lease{spec: spec, value: newValue(), waiter: waiter}
	l.deadlineNanos.Store(math.MaxInt64)
	return l
}

// acquire runs the acquisition round, waiting no longer than ctx allows.
func (l *lease) acquire(ctx context.Context) outcome[uint64] {
	l.start = time.Now()
	l.round = launch(l.spec.client, ctx, roundSpec[uint64]{call: l.spec.kind.grant(l.value), timeout: l.spec.nodeTimeout,
		live: (*unended)(l), heard: (*granting)(l)})
	return l.round.wait(ctx, nil)
}

// granting hears a lease's grants.
type granting lease

// heard hears a node's reply to the acquisition round. A reply that comes
// once the attempt failed or the lease ended is undone: the key is released
// at once, and a call whose fate is unknown is also remembered, in case the
// command itself lands later. A refusal needs no release, unless the round
// was won: the key may then be the lease's own, put back by a repair while
// the grant was on its way.
func (g *granting) heard(n *node, rep reply[uint64], late, won bool) {
	l := (*lease)(g)
	if won && !late {
		// A reply after the round was won, which its outcome did not show.
		if cause := l.spec.kind.disowns(n, rep); cause != nil {
			l.disown(cause)
		}
		return
	}
	if !late || (rep.refused() && !won) || neverRan(rep.err) {
		return
	}
	if timedOut(rep.err) {
		// The node did not answer the grant in time: a release now would
		// most likely wait out the timeout too. The grant may land later;
		// it is released once the node answers.
		l.remember(n)
		return
	}
	l.mu.Lock()
	wake := l.wakeOnUndo
	l.mu.Unlock()
	l.undoOn(n, wake)
	if maybeRan(rep.err) {
		l.remember(n) // the grant itself may land later
	}
}

// disown ends the lease for cause, a node's reply to its won round that
// came after the round was decided: as a loss if it is held, or as soon as
// its holder takes it (see hold). An attempt that gave the round up already
// has nothing to end.
func (l *lease) disown(cause error) {
	l.mu.Lock()
	state := l.state
	if state == acquiring {
		l.disowned = cause
	}
	l.mu.Unlock()
	if state == held {
		l.lose(LostDisowned, cause)
	}
}

// remember notes that the lease's key may be left on n, to be released
// once n answers.
func (l *lease) remember(n *node) {
	n.remember(l.spec.kind.forgetting(), l.value, l.spec.nodeTimeout)
}

// undoOn releases the lease's key on n, from n's goroutine. With wake,
// where it deletes the key it wakes the next live waiter there, as a
// release does (see abandon). If the release gets no answer, or an error,
// the key is remembered, to be released again once n answers.
func (l *lease) undoOn(n *node, wake bool) {
	ctx, cancel := context.WithTimeout(context.Background(), l.spec.nodeTimeout)
	defer cancel()
	if rep := l.spec.kind.release(l.value, "", wake)(ctx, n, nil); rep.err != nil {
		n.failed(rep.err)
		l.remember(n)
	}
}

// abandon gives up an attempt that failed: it releases, in the background,
// the nodes that granted it or whose answer is unknown; nodes that answer
// later release themselves (see granting).
//
// An attempt that fewer than a quorum refused may have had its key on a
// quorum, as a holder has (its ctx ended, say, while its grants were on
// their way back): a waiter whose queue call met those keys sleeps as
// behind a holder, for a release. Its undoing then wakes the next live
// waiter where it deletes the key, as a release does. An attempt that a
// quorum refused lost to a holder, whose release wakes the waiters: it
// wakes nobody.
func (l *lease) abandon() {
	l.mu.Lock()
	l.state = released
	l.mu.Unlock()
	release, unsure, refusals := l.round.abandon()
	// A late grant read between the two sees no wake: its waiter polls.
	wake := len(l.spec.client.nodes)-refusals >= quorum(len(l.spec.client.nodes))
	l.mu.Lock()
	l.wakeOnUndo = wake
	l.mu.Unlock()
	if release == nil {
		return
	}
	c := l.spec.client
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.callsStopped {
		return
	}
	for i, n := range c.nodes {
		if !release[i] {
			continue
		}
		doubt := unsure != nil && unsure[i]
		spawned := n.spawn(l.spec.nodeTimeout, func() {
			l.undoOn(n, wake)
			if doubt {
				l.remember(n)
			}
		})
		if !spawned { // the node is hung: release it once it answers
			l.remember(n)
		}
	}
}

// hold makes the lease held, with the validity that ends at until, and
// returns its held context, derived from ctx. The expiry timer and the
// watchdog start under the lease's lock, so that neither can act on it
// before both know of it. If the validity has already ended (the process
// paused, say), or a node disowned the lease meanwhile, the lease is lost
// at once.
func (l *lease) hold(ctx context.Context, until time.Time, token uint64) context.Context {
	inner, cancel := context.WithCancelCause(ctx)
	l.ctx = heldContext{Context: inner, l: l}
	l.heldAt = time.Now()
	c := l.spec.client
	c.leases.Add(1) // Done when the final release finishes
	l.mu.Lock()
	l.state, l.until, l.token, l.cancel = held, until, token, cancel
	if l.spec.maxHold > 0 {
		l.limit = l.start.Add(l.spec.maxHold)
	}
	deadline := l.deadline()
	l.deadlineNanos.Store(int64(deadline.Sub(epoch)))
	l.timer = takeTimer(l)
	l.timer.t.Reset(time.Until(deadline))
	watched := c.watchdog.add(l, l.start.Add(l.spec.interval))
	disowned := l.disowned
	l.mu.Unlock()
	switch {
	case !watched:
		l.lose(LostClosed, fmt.Errorf("%w: %w", ErrLockLost, ErrClosed))
	case disowned != nil:
		l.lose(LostDisowned, disowned)
	}
	return &l.ctx
}

// deadline is when the lease stops being held unless an extension moves
// it: lead before the validity ends, or at the maximum hold if that comes
// first. l.mu is held.
func (l *lease) deadline() time.Time {
	deadline := l.until.Add(-l.spec.lead())
	if !l.limit.IsZero() && l.limit.Before(deadline) {
		return l.limit
	}
	return deadline
}

// pastDeadline reports whether the deadline has passed: the validity has
// ended, or is about to, or the maximum hold has passed; the expiry timer
// should have fired. l.mu is held.
func (l *lease) pastDeadline() bool {
	return !time.Now().Before(l.deadline())
}

// checkDeadline loses the lease if its validity is about to end with no
// quorum confirmed, or its maximum hold has passed, unless an extension has
// moved the deadline since the timer was set.
func (l *lease) checkDeadline() {
	l.mu.Lock()
	if l.state != held {
		l.mu.Unlock()
		return
	}
	now := time.Now()
	if left := l.deadline().Sub(now); left > 0 {
		l.timer.t.Reset(left)
		l.mu.Unlock()
		return
	}
	until := l.until
	l.mu.Unlock()
	if now.Before(until.Add(-l.spec.lead())) {
		l.lose(LostMaxHold, fmt.Errorf("%w: held for its maximum of %v (WithMaxHold)", ErrLockLost, l.spec.maxHold))
		return
	}
	l.lose(LostDeadline, fmt.Errorf("%w: no quorum confirmed it before its validity ended at %v", ErrLockLost, until.Format(time.RFC3339Nano)))
}

// overdue loses the lease if its validity has ended and its timer has not
// fired yet.
func (l *lease) overdue() {
	if int64(time.Since(epoch)) >= l.deadlineNanos.Load() {
		l.checkDeadline()
	}
}

// lose ends a held lease with cause, for the reason why: the held context
// ends at once, and the key is released on every node in the background,
// once the rounds in flight for it are done. A lease that reached its
// maximum hold keeps its key until the end of its validity, or until its
// release or Close if they come first, so that a holder that checks held
// between steps has the rest of the validity to stop.
func (l *lease) lose(why LossCause, cause error) {
	keepKey := why == LostMaxHold
	l.mu.Lock()
	if l.state != held {
		l.mu.Unlock()
		return
	}
	l.state, l.cause = lost, cause
	l.stopHolding()
	releaseAt := l.until
	if keepKey {
		l.releaseEarly = make(chan struct{})
	}
	early := l.releaseEarly
	heldFor := l.stoppedAt.Sub(l.heldAt)
	l.order.losing(&l.spec.events)
	l.mu.Unlock()
	l.spec.client.watchdog.remove(l)
	l.cancel(cause)
	level := slog.LevelWarn
	if errors.Is(cause, ErrClosed) {
		level = slog.LevelInfo
	}
	l.spec.logger.Log(context.Background(), level, "redlock: lock lost", "lock", l.spec.name, "cause", cause)
	// Counted in the Client's leases since hold.
	if keepKey {
		go l.releaseAt(releaseAt, early)
	} else {
		go l.releaseAll(context.Background())
	}
	l.order.lost(&l.spec.events, LostEvent{Kind: l.spec.events.kind, Name: l.spec.name, Cause: why, Held: heldFor, Err: cause})
}

// keptUntil reports whether the lost lease keeps its key until the end
// of its validity (it reached its maximum hold): when that is, and a
// channel closed if its final release begins before.
func (l *lease) keptUntil() (time.Time, <-chan struct{}, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.releaseEarly == nil || l.final.begun {
		return time.Time{}, nil, false
	}
	return l.until, l.releaseEarly, true
}

// releaseAt makes the final release at the given time, the end of the
// validity, or at once if the Client closes; unless the release begins
// before then (early is closed).
func (l *lease) releaseAt(at time.Time, early <-chan struct{}) {
	timer := time.NewTimer(time.Until(at))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-l.spec.client.closing:
	case <-early:
		return
	}
	l.releaseAll(context.Background())
}

// stopHolding records the end of being held: no expiry, no held context
// reading the validity. l.mu is held.
func (l *lease) stopHolding() {
	l.stoppedAt = time.Now()
	l.deadlineNanos.Store(math.MaxInt64)
	putTimer(l.timer)
	l.timer = nil
}

// release ends the lease for its holder (Unlock, Release, Resign): it stops
// the watchdog for it, ends the held context, and releases the key on every
// node, after the rounds in flight for it are done. It returns what the
// release learned, and the error of a lease that had been lost: before
// the release began, or as the release found, when a quorum of nodes said
// the key was gone. Its error wraps ErrLockLost in either case, and
// otherwise names the node errors that kept a quorum from confirming. The
// Lost and Released events are told here.
func (l *lease) release(ctx context.Context) (out outcome[releaseReport], err error) {
	var start time.Time
	if l.spec.events.on() {
		start = time.Now()
	}
	// A validity that ended unnoticed (the process paused, say) is a loss,
	// though the expiry timer has not fired yet.
	l.overdue()
	l.mu.Lock()
	was, cause := l.state, l.cause
	if was == held {
		l.state = released
		l.stopHolding()
	}
	l.mu.Unlock()
	if was == held {
		l.spec.client.watchdog.remove(l)
		l.cancel(nil)
	}
	out = l.releaseAll(ctx)
	nodes := len(l.spec.client.nodes)
	foundLost := cause == nil && !out.won && out.refusals >= quorum(nodes)
	lostErr := cause
	if foundLost {
		lostErr = fmt.Errorf("%w: %d of %d nodes no longer held it at release", ErrLockLost, out.refusals, nodes)
		l.mu.Lock()
		l.final.lostFound = lostErr
		l.mu.Unlock()
	}
	err = releaseError(out, lostErr, nodes)
	if l.spec.events.on() {
		if foundLost {
			l.order.losing(&l.spec.events)
			l.order.lost(&l.spec.events, LostEvent{Kind: l.spec.events.kind, Name: l.spec.name, Cause: LostRefused, Held: start.Sub(l.heldAt), Err: lostErr})
		}
		l.order.released(&l.spec.events, ReleasedEvent{Context: ctx, Kind: l.spec.events.kind, Name: l.spec.name, Start: start, Duration: time.Since(start),
			Held: start.Sub(l.heldAt), Lost: lostErr != nil, Err: err})
	}
	return out, err
}

// releaseError is the error of a holder's release, given what it learned
// and the error of the loss, if the lease had been lost.
func releaseError(out outcome[releaseReport], lostErr error, nodes int) error {
	switch {
	case lostErr != nil:
		return errors.Join(lostErr, out.errs)
	case out.won:
		return nil
	default:
		return errors.Join(fmt.Errorf("redlock: release confirmed by %d of %d nodes, less than a quorum; %d no longer held it", out.oks, nodes, out.refusals), out.errs)
	}
}

// releaseAll releases the lease's key on every node, once: the second
// caller waits for the first, or until ctx is done. It waits for the
// extension and repair rounds in flight (each bounded by the node timeout),
// leaves the nodes whose grant is still in flight to the acquisition round,
// and remembers the nodes where a command of the lease may still land.
func (l *lease) releaseAll(ctx context.Context) (out outcome[releaseReport]) {
	l.mu.Lock()
	if l.final.begun {
		return l.waitRelease(ctx)
	}
	l.final.begun = true
	if l.releaseEarly != nil {
		close(l.releaseEarly)
	}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.final.finished, l.final.out = true, out
		if l.final.waiting != nil {
			close(l.final.waiting)
		}
		l.mu.Unlock()
		l.spec.client.leases.Done()
	}()
	c := l.spec.client
	l.busy.Wait()
	pending, unsure := l.round.handOver()
	l.mu.Lock()
	for i, u := range l.unsure {
		if u {
			unsure = setBit(unsure, i, len(c.nodes))
		}
	}
	l.mu.Unlock()
	for i, u := range unsure {
		if u {
			l.remember(c.nodes[i])
		}
	}
	r := launch(c, ctx, roundSpec[releaseReport]{call: l.spec.kind.release(l.value, l.waiter, true), timeout: l.spec.nodeTimeout,
		skip: skipping(pending, errReleaseOnAnswer), heard: (*releasing)(l), untilRefused: true, anyNode: true})
	return r.wait(ctx, nil)
}

// waitRelease waits for the final release begun by another caller, or
// until ctx is done, and returns what it learned. l.mu is held, and
// released.
func (l *lease) waitRelease(ctx context.Context) outcome[releaseReport] {
	if l.final.finished {
		defer l.mu.Unlock()
		return l.final.out
	}
	if l.final.waiting == nil {
		l.final.waiting = make(chan struct{})
	}
	wait := l.final.waiting
	l.mu.Unlock()
	select {
	case <-wait:
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.final.out
	case <-ctx.Done():
		return outcome[releaseReport]{errs: fmt.Errorf("redlock: release still in flight: %w", ctx.Err())}
	}
}

// releasing hears a lease's final release.
type releasing lease

// heard hears a node's reply to the final release: a key that the release
// may not have deleted is remembered, to be released again.
func (r *releasing) heard(n *node, rep reply[releaseReport], _, _ bool) {
	l := (*lease)(r)
	if rep.err != nil {
		l.remember(n)
	}
	if rep.value.unheard {
		l.spec.client.wakeUnheard(n, "PUBLISH")
	}
}

// beginRound lets an extension or repair round start for the lease, if it
// is still held and its validity has not ended (the expiry timer may be
// late); the caller calls roundDone when the round is done.
func (l *lease) beginRound() bool {
	l.mu.Lock()
	if l.state == held && !l.pastDeadline() {
		l.busy.Add(1)
		l.mu.Unlock()
		return true
	}
	l.mu.Unlock()
	l.checkDeadline()
	return false
}

func (l *lease) roundDone() { l.busy.Done() }

// extended moves the validity on to until, if the lease is still held and
// until is later. It returns the validity's end, and whether the lease is
// still held. A confirmation that comes once the validity has ended is too
// late: the lease was lost, whether or not the expiry timer has fired yet,
// and is not taken back.
func (l *lease) extended(until time.Time) (time.Time, bool) {
	l.mu.Lock()
	if l.state == held && l.pastDeadline() {
		l.mu.Unlock()
		l.checkDeadline()
		return time.Time{}, false
	}
	defer l.mu.Unlock()
	if l.state != held {
		return time.Time{}, false
	}
	if until.After(l.until) {
		l.until = until
		l.deadlineNanos.Store(int64(l.deadline().Sub(epoch)))
	}
	return l.until, true
}

// unended says whether a lease's grants may still be sent: it has not
// ended.
type unended lease

func (u *unended) wanted() bool {
	l := (*lease)(u)
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state == acquiring || l.state == held
}

// isHeld reports whether the lease is still held.
func (l *lease) isHeld() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state == held
}

// holding says whether a lease's repairs may still be sent: it is held.
type holding lease

func (h *holding) wanted() bool { return (*lease)(h).isHeld() }

// lostCause returns why the lease was lost, or nil if it was not: lost
// while held, or found lost by its holder's release.
func (l *lease) lostCause() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cause != nil {
		return l.cause
	}
	return l.final.lostFound
}

// repairing hears a lease's repairs.
type repairing lease

// heard hears a node's reply to a repair. A repair that lands once the
// lease is no longer held is released at once; one whose fate is unknown
// is remembered, now if the lease has ended, or at its end.
func (r *repairing) heard(n *node, rep reply[none], _, _ bool) {
	l := (*lease)(r)
	// A client that resends by itself can turn a repair that landed into
	// a refusal.
	unsure := maybeRan(rep.err) || (n.retries && rep.refused())
	l.mu.Lock()
	ended := l.state != held
	if unsure && !ended {
		l.unsure = setBit(l.unsure, n.index, len(l.spec.client.nodes))
	}
	l.mu.Unlock()
	switch {
	case ended && rep.ok:
		l.undoOn(n, false) // the lease's release woke the next waiter
	case ended && unsure:
		l.remember(n)
	}
}

// validity returns the end of the validity and the token while the lease
// is held, and zeros otherwise.
// fencingToken returns the token the lease was held with, even once it
// has ended.
func (l *lease) fencingToken() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.token
}

func (l *lease) validity() (time.Time, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != held {
		return time.Time{}, 0
	}
	return l.until, l.token
}

// heldContext is the context a lease's holder gets. Its Err and Done also
// look at the lease's validity: once the validity has ended, Err is not nil
// and Done is closed even if the expiry timer has not fired yet, as happens
// to a process that wakes from a pause longer than the validity. Contexts
// derived from it after that are born done.
type heldContext struct {
	context.Context
	l *lease
}

func (c *heldContext) Err() error {
	c.l.overdue()
	return c.Context.Err()
}

func (c *heldContext) Done() <-chan struct{} {
	c.l.overdue()
	return c.Context.Done()
}

// leaseTimer is a lease's expiry timer. Timers are reused from one lease to
// the next, which saves two allocations per acquisition: a timer that fires
// for a lease that has stopped being held finds its next lease, or none,
// and checkDeadline makes such a call harmless.
type leaseTimer struct {
	t     *time.Timer
	lease atomic.Pointer[lease]
}

var leaseTimers sync.Pool

// takeTimer returns a stopped timer for l.
func takeTimer(l *lease) *leaseTimer {
	lt, _ := leaseTimers.Get().(*leaseTimer)
	if lt == nil {
		lt = &leaseTimer{}
		lt.t = time.AfterFunc(time.Hour, lt.fire)
		lt.t.Stop()
	}
	lt.lease.Store(l)
	return lt
}

// putTimer stops lt and keeps it for another lease.
func putTimer(lt *leaseTimer) {
	lt.t.Stop()
	lt.lease.Store(nil)
	leaseTimers.Put(lt)
}

func (lt *leaseTimer) fire() {
	if l := lt.lease.Load(); l != nil {
		l.checkDeadline()
	}
}
