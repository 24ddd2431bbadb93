package redlock

import (
	"context"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Semaphore is a lock that up to Permits holders have at once: every process
// that makes a Semaphore of the same name, with the same number of permits,
// over the same masters, shares them. Each permit is a lease with its own
// random value that the Client's watchdog extends, as it extends a Mutex's
// lock. A Semaphore is safe for concurrent use by many goroutines, which may
// each hold a permit. Make one with Client.NewSemaphore; the zero value is
// not usable.
type Semaphore struct {
	client  *Client
	name    string
	permits int
	cfg     config
	err     error // bad configuration, reported by every call
	keys    *semaphoreKeys
	slots   slotSpecs
	retry   retryPolicy
	events  events
	timeout time.Duration // the node timeout
	// queued is set when a release of one of its permits woke a queued
	// waiter: the next Acquire then queues behind it instead of trying
	// first.
	queued atomic.Bool
}

// Permit is one permit of a Semaphore, from Acquire until Release. Its zero
// value is not usable.
type Permit struct {
	s        *Semaphore
	l        *lease
	held     context.Context
	released atomic.Bool
}

// SemaphoreStatus is what the nodes say of a Semaphore at one moment, as
// Semaphore.Status reads it. Its zero value is a Semaphore of no permits.
type SemaphoreStatus struct {
	Permits int // the limit
	Held    int // permits held, as a quorum of masters reports them
	Waiters int // live waiters, as a quorum reports them
}

// NewSemaphore returns a Semaphore of permits permits called name. The
// options override the Client's for this Semaphore; WithFencing and
// WithExactKey do not apply to a Semaphore and are rejected. An empty name,
// a name with a brace, permits below 1 or above MaxPermits, or an invalid
// option is reported by every call on the Semaphore. NewSemaphore does not
// contact Redis.
func (c *Client) NewSemaphore(name string, permits int, opts ...Option) *Semaphore {
	cfg := c.cfg
	cfg.errs, cfg.fencing, cfg.exactKey = nil, false, false
	cfg.apply(opts)
	errs := []error{cfg.validate()}
	if cfg.fencing {
		errs = append(errs, errors.New("redlock: WithFencing does not apply to a Semaphore"))
	}
	if cfg.exactKey {
		errs = append(errs, errors.New("redlock: WithExactKey does not apply to a Semaphore"))
	}
	switch {
	case name == "":
		errs = append(errs, errors.New("redlock: semaphore name is empty"))
	case strings.ContainsAny(name, "{}"):
		errs = append(errs, fmt.Errorf("redlock: semaphore name %q has a brace, which would break the hash tag of its keys", name))
	}
	if permits < 1 || permits > MaxPermits {
		errs = append(errs, fmt.Errorf("redlock: semaphore %q: %d permits is outside [1, %d]", name, permits, MaxPermits))
	}
	s := &Semaphore{
		client:  c,
		name:    name,
		permits: permits,
		cfg:     cfg,
		err:     errors.Join(errs...),
		retry:   newRetryPolicy(&cfg),
		timeout: cfg.perNodeTimeout(),
		events:  events{observer: cfg.observer, logger: cfg.logger, kind: KindSemaphore, name: name},
	}
	if s.err != nil {
		return s
	}
	s.keys = newSemaphoreKeys(cfg.keyPrefix+"{"+name+"}"+semaphoreSuffix, permits)
	s.slots = slotSpecs{specs: make([]atomic.Pointer[leaseSpec], permits), make: func(slot int) *leaseSpec {
		spec := cfg.leaseSpec(c, newSlotKind(c, name, s.keys, slot, &cfg), KindSemaphore, name)
		return &spec
	}}
	return s
}

// Name returns the name the Semaphore was made with.
func (s *Semaphore) Name() string { return s.name }

// Permits returns the number of permits the Semaphore was made with.
func (s *Semaphore) Permits() int { return s.permits }

// usable reports bad configuration or a closed Client.
func (s *Semaphore) usable() error {
	if s.err != nil {
		return s.err
	}
	if s.client.isClosing() {
		return ErrClosed
	}
	return nil
}

// Acquire takes a permit, waiting until one is free or ctx is done, as
// Mutex.LockContext waits for its lock: a waiter joins the Semaphore's queue
// and is woken by a release, in the order of the queue. The permit's
// Context derives from ctx, and ends when ctx ends, at Release, or when the
// permit is lost, in which case its cause wraps ErrLockLost. If ctx ends
// first, the error wraps ErrNotAcquired, ctx.Err(), and the reasons of the
// last attempt: ErrTaken when every permit was held, ErrNoQuorum when nodes
// failed. A limit that differs from another user's is returned at once as
// ErrPermitsMismatch, or, if the node that stores it answers only after a
// quorum granted the permit, ends the permit with a cause that wraps
// ErrPermitsMismatch too. With WithWaitTimeout the wait also ends after that
// long. Acquire panics if ctx is nil.
func (s *Semaphore) Acquire(ctx context.Context) (*Permit, error) {
	mustContext(ctx)
	waitCtx := ctx
	if s.cfg.waitTimeout > 0 {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, s.cfg.waitTimeout)
		defer cancel()
	}
	return s.acquire(ctx, waitCtx, false)
}

// TryAcquire makes one attempt to take a permit: it asks for a slot, and
// if that one is taken, for slots that the refusals report free (or, with
// more than 64 permits, that a read of every slot finds free), for up to
// Permits slots, until a quorum reports none free; if the refusals showed
// every slot taken, it pauses for about as long as a round took, reads
// every slot, and asks once more for one free on a quorum, since rival
// attempts that lose give their slots back. The attempt is bounded by ctx
// and by three node timeouts after its first round (it begins nothing past
// two, and everything it begins ends within one); while fewer than a
// quorum of the Client's nodes are shown to be servers of their own, it
// first waits for that check, for up to another node timeout. If the
// attempt fails, its error wraps ErrTaken when the permits were held,
// ErrNoQuorum with the node errors when nodes failed, or both; and
// ctx.Err() if ctx ended. On success the permit is as for Acquire. It
// panics if ctx is nil.
func (s *Semaphore) TryAcquire(ctx context.Context) (*Permit, error) {
	mustContext(ctx)
	return s.acquire(ctx, ctx, true)
}

// acquire takes a permit for Acquire, or with once for TryAcquire, waiting
// until waitCtx is done; the permit's context derives from ctx.
func (s *Semaphore) acquire(ctx, waitCtx context.Context, once bool) (*Permit, error) {
	var start time.Time
	if s.events.on() {
		start = time.Now()
	}
	w := &waiter{lock: s, client: s.client, retry: s.retry, nodeTimeout: s.timeout, logger: s.cfg.logger, name: s.name,
		queued: &s.queued, ctx: ctx, waitCtx: waitCtx, once: once}
	held, err := s.wait(w)
	if err != nil {
		if s.events.on() {
			s.events.notAcquired(ctx, start, w.attempts, err)
		}
		return nil, err
	}
	l := held.(*heldContext).l
	if s.events.on() {
		l.order.acquired(&l.spec.events, func() { l.spec.events.acquired(ctx, start, w.attempts, 0) })
	}
	return &Permit{s: s, l: l, held: held}, nil
}

// wait runs w, unless the Semaphore is unusable or the wait is over before
// it began.
func (s *Semaphore) wait(w *waiter) (context.Context, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	if w.waitCtx.Err() != nil {
		return nil, waitEnded(w.waitCtx, nil)
	}
	return w.run()
}

// slotSpan is how long, in node timeouts, after an attempt's first round
// it may begin another round, a read of the slots or the pause before its
// last try: each of them ends within a node timeout, so that an attempt
// lasts at most slotSpan+1 node timeouts beyond the nodes' identity check.
const slotSpan = 2

// attempt makes one attempt for a permit: a round for a slot drawn at
// random, then, while a quorum's refusals (or, past their window, a read of
// every slot) report another slot free, a round for that one, for up to
// permits rounds in all. If a round's refusals show every slot taken, the
// slots may be taken by rival attempts that are about to lose and give
// them back: the attempt pauses for about as long as its round took, reads
// every slot, and tries once more if one is free on a quorum. The permit's
// context derives from ctx; the rounds wait no longer than waitCtx allows,
// and none begins after slotSpan node timeouts.
func (s *Semaphore) attempt(waitCtx, ctx context.Context, waiter string) (held context.Context, permanent bool, err error) {
	if waitCtx.Err() != nil {
		return nil, false, ErrNotAcquired // no attempt: the caller says why
	}
	c := s.client
	if permanent, err := c.identify(waitCtx, s.timeout); err != nil {
		return nil, permanent, err
	}
	slot := mathrand.N(s.permits)
	span := time.Now().Add(slotSpan * s.timeout)
	inSpan := func() bool { return waitCtx.Err() == nil && time.Now().Before(span) }
	retried := false
	for tries := 1; ; tries++ {
		spec := s.slots.get(slot)
		l := newLease(spec, waiter)
		out := l.acquire(waitCtx)
		took := time.Since(l.start)
		until := spec.validityEnd(l.start)
		// A node that stores another limit is a mismatch even in a round
		// the others won: every user of the name must give up, not only
		// those that lose. One heard before the round was decided fails
		// the attempt; one heard after ends the permit, whose Context's
		// cause then wraps ErrPermitsMismatch (see slotKind.disowns).
		mismatch := s.mismatch(out)
		if out.won && mismatch == nil && time.Now().Before(until) {
			return l.hold(ctx, until, 0), false, nil
		}
		l.abandon()
		switch {
		case mismatch != nil:
			return nil, true, mismatch
		case out.won:
			return nil, false, fmt.Errorf("%w: acquisition took longer than the TTL allows", ErrNoQuorum)
		}
		permanent = out.permanentFailures() > len(c.nodes)-quorum(len(c.nodes))
		if permanent {
			return nil, true, notAcquired(out)
		}
		next, found := 0, false
		if tries < s.permits && inSpan() {
			next, found = s.freeSlot(out, slot)
			if !found && s.permits > slotWindow && inSpan() {
				// The refusals report on a window of the slots only.
				next, found = s.scanSlots(waitCtx)
			}
		}
		if !found && !retried && out.refusals > 0 && inSpan() {
			// Every slot looked taken, perhaps by rivals whose rounds
			// lose, as this one did, and whose undoing takes about as long
			// again.
			retried = true
			if s.pause(waitCtx, took) && inSpan() {
				next, found = s.scanSlots(waitCtx)
			}
		}
		if !found || !inSpan() {
			return nil, false, notAcquired(out)
		}
		slot = next
	}
}

// pause waits for between one and two times took, drawn at random, and
// for no longer than half the node timeout, or until ctx is done. It
// reports whether ctx is still live.
func (s *Semaphore) pause(ctx context.Context, took time.Duration) bool {
	wait := min(took+mathrand.N(took+1), s.timeout/2)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// freeSlot picks, from a lost round for slot, another slot that may be free
// on a quorum: each refusal reports the free slots of its window, and nodes
// that granted the slot or were not heard from may have it free too. Of
// those, it picks one that the most refusals report free, at random among
// equals, so that contenders spread over the free slots.
func (s *Semaphore) freeSlot(out outcome[uint64], slot int) (next int, found bool) {
	nodes := len(out.replies)
	var free [slotWindow]int
	unknown := 0 // nodes whose free slots are not known, and which have not failed
	for _, rep := range out.replies {
		switch {
		case rep.answered && rep.refused():
			for b := 1; b < slotWindow; b++ {
				if rep.value&(1<<b) != 0 {
					free[b]++
				}
			}
		case !rep.answered || rep.ok:
			unknown++
		}
	}
	best, ties := 0, 0
	for b := 1; b < min(s.permits, slotWindow); b++ {
		switch {
		case free[b] == 0 || free[b]+unknown < quorum(nodes) || free[b] < best:
		case free[b] > best:
			best, ties, next = free[b], 1, b
		default:
			ties++
			if mathrand.N(ties) == 0 {
				next = b
			}
		}
	}
	if best == 0 {
		return 0, false
	}
	return (slot + next) % s.permits, true
}

// scanSlots reads every slot on the nodes, for a Semaphore of more slots
// than a refusal reports on, and picks one that a quorum reports free, at
// random among those. It waits until some slot is free on a quorum, or
// none can be.
func (s *Semaphore) scanSlots(ctx context.Context) (slot int, found bool) {
	c := s.client
	nodes := len(c.nodes)
	r := launch(c, ctx, roundSpec[semaphoreNodeStatus]{call: semaphoreStatus(s.keys, 0), timeout: s.timeout})
	free := make([]int, s.permits) // by slot, the nodes that report it free
	unanswered, most := nodes, 0
	r.wait(ctx, func(_ int, rep reply[semaphoreNodeStatus], _ int) bool {
		unanswered--
		for i := range free {
			if rep.ok && i < len(rep.value.held) && rep.value.held[i] == '0' {
				free[i]++
				most = max(most, free[i])
			}
		}
		return most >= quorum(nodes) || most+unanswered < quorum(nodes)
	})
	ties := 0
	for i, count := range free {
		if count >= quorum(nodes) {
			ties++
			if mathrand.N(ties) == 0 {
				slot = i
			}
		}
	}
	return slot, ties > 0
}

// mismatch is the error of a round in which a node stores another limit
// for the Semaphore, or nil.
func (s *Semaphore) mismatch(out outcome[uint64]) error {
	for i, rep := range out.replies {
		var mismatch *permitsMismatchError
		if rep.answered && errors.As(rep.err, &mismatch) {
			return permitsMismatch(s.name, s.permits, s.client.nodes[i], mismatch.stored)
		}
	}
	return nil
}

// joinQueue puts waiter in the Semaphore's queue (or keeps it there) on the
// nodes, and reads the slots: a permit is free if a quorum of nodes reports
// some slot free. Every holder is of this package, and wakes the waiter.
func (s *Semaphore) joinQueue(ctx context.Context, waiter, mode string) queueView {
	c := s.client
	call := joinCall(s.keys, waiter, mode, s.retry.aliveTTL(), s.retry.queueTTL())
	r := launch(c, ctx, roundSpec[semaphoreNodeStatus]{call: call, timeout: s.timeout})
	free := make([]int, s.permits) // by slot, the nodes that report it free
	unanswered, anyFree := len(c.nodes), false
	r.wait(ctx, func(_ int, rep reply[semaphoreNodeStatus], _ int) bool {
		unanswered--
		most := 0
		for slot := range free {
			if rep.ok && slot < len(rep.value.held) && rep.value.held[slot] == '0' {
				free[slot]++
			}
			most = max(most, free[slot])
		}
		anyFree = most >= quorum(len(c.nodes))
		return anyFree || most+unanswered < quorum(len(c.nodes))
	})
	return queueView{free: anyFree, wakes: true}
}

// leaveQueue takes a waiter out of the queue, and passes on the wake-ups
// that releases sent it (see leaveCall), even a winner's: it may have won
// its permit without the wake-up, whose release freed another. It waits
// for a quorum at most; the other nodes finish in the background.
func (s *Semaphore) leaveQueue(waiter string, _ bool) {
	call := leaveCall(s.keys.queueKeys, s.keys.wakeKeys, waiter, s.retry.aliveTTL(), s.retry.queueTTL())
	ctx := context.Background()
	launch(s.client, ctx, roundSpec[none]{call: call, timeout: s.timeout, anyNode: true}).wait(ctx, nil)
}

// dequeueOn takes a winner out of the queue on the nodes that did not wake
// it, without waiting (see waiter.close): the other holders' releases
// would wake it there.
func (s *Semaphore) dequeueOn(waiter string, woke []bool) {
	dequeueSkipping(s.client, dequeueCall(s.keys.queueKeys, waiter, s.retry.queueTTL()), s.timeout, woke)
}

// Status reads the Semaphore on every node without taking a permit: how
// many permits a quorum reports held, and how many live waiters a quorum
// reports queued. It waits for every node's answer, each for no longer
// than the node timeout, and fails if fewer than a quorum answered, with
// their node errors, if ctx ends first, or with ErrPermitsMismatch if a
// node stores another limit. It panics if ctx is nil.
func (s *Semaphore) Status(ctx context.Context) (SemaphoreStatus, error) {
	mustContext(ctx)
	if err := s.usable(); err != nil {
		return SemaphoreStatus{}, err
	}
	c := s.client
	if !c.enterCall() {
		return SemaphoreStatus{}, ErrClosed
	}
	defer c.exitCall()
	if err := ctx.Err(); err != nil {
		return SemaphoreStatus{}, fmt.Errorf("redlock: status: %w", err)
	}
	// Only nodes shown to be servers of their own are read; the others
	// count as failed, with why.
	if permanent, err := c.identify(ctx, s.timeout); permanent {
		return SemaphoreStatus{}, fmt.Errorf("redlock: status: %w", err)
	}
	heard := 0
	r := launch(c, ctx, roundSpec[semaphoreNodeStatus]{call: semaphoreStatus(s.keys, maxStatusWaiters), timeout: s.timeout, waitAll: true})
	out := r.wait(ctx, func(int, reply[semaphoreNodeStatus], int) bool {
		heard++
		return heard == len(c.nodes)
	})
	if r.ctxErr != nil {
		return SemaphoreStatus{}, fmt.Errorf("redlock: status: %d of %d nodes had answered: %w", heard, len(c.nodes), r.ctxErr)
	}
	if out.oks < quorum(len(c.nodes)) {
		return SemaphoreStatus{}, fmt.Errorf("redlock: status read from %d of %d nodes, fewer than a quorum: %w", out.oks, len(c.nodes), r.nodeErrors(out.replies))
	}
	return s.status(out.replies)
}

// status makes a SemaphoreStatus of the nodes' answers.
func (s *Semaphore) status(replies []reply[semaphoreNodeStatus]) (SemaphoreStatus, error) {
	nodes := len(s.client.nodes)
	held := make([]int, s.permits) // by slot, the nodes that hold it
	var waiters []int
	for i, rep := range replies {
		if !rep.answered || !rep.ok {
			continue
		}
		if limit := rep.value.limit; limit != "" && limit != strconv.Itoa(s.permits) {
			return SemaphoreStatus{}, permitsMismatch(s.name, s.permits, s.client.nodes[i], limit)
		}
		for slot := range held {
			if slot < len(rep.value.held) && rep.value.held[slot] == '1' {
				held[slot]++
			}
		}
		waiters = append(waiters, rep.value.waiters)
	}
	st := SemaphoreStatus{Permits: s.permits}
	for _, count := range held {
		if count >= quorum(nodes) {
			st.Held++
		}
	}
	slices.Sort(waiters)
	st.Waiters = waiters[len(waiters)-quorum(nodes)]
	return st, nil
}

// Context returns the permit's held context: derived from the context given
// to Acquire, it ends at Release, when that context ends, or when the
// permit is lost, before its lease could expire; its cause then wraps
// ErrLockLost.
func (p *Permit) Context() context.Context { return p.held }

// Until returns the end of the permit's validity: until then no other
// holder can have its slot, assuming bounded clock drift. It is the zero
// time once the permit was released or lost.
func (p *Permit) Until() time.Time {
	until, _ := p.l.validity()
	return until
}

// Release gives the permit back: it stops the watchdog for it, ends its
// Context, waits for any extension or repair in flight, deletes its slot on
// every node where it still holds it, and wakes the next live waiter. It
// returns as Mutex.UnlockContext does: once a quorum of nodes has
// confirmed, or said the slot was gone, and at the latest after the node
// timeout. It returns ErrNotHeld if the permit was released already, an
// error wrapping ErrLockLost if it had been lost or a quorum no longer held
// it, and otherwise the node errors that kept a quorum from confirming.
// ctx bounds only the wait for the nodes' answers. It panics if ctx is nil.
func (p *Permit) Release(ctx context.Context) error {
	mustContext(ctx)
	if p.released.Swap(true) {
		return ErrNotHeld
	}
	out, err := p.l.release(ctx)
	p.s.queued.Store(woke(out))
	return err
}

// Do runs fn while holding a permit: it acquires one as Acquire does, calls
// fn with the permit's Context, and releases the permit when fn returns,
// with a context that the end of ctx does not cancel, bounded by three node
// timeouts. It returns nil only if fn returned nil and the permit was held
// until fn returned; if the permit was lost, the error wraps ErrLockLost,
// even when fn returned nil. Errors from fn, the loss and the release are
// joined. If no permit is acquired, fn is not called and the error is
// Acquire's. If fn panics, Do releases the permit and panics again. Do
// panics if ctx or fn is nil.
func (s *Semaphore) Do(ctx context.Context, fn func(held context.Context) error) error {
	mustContext(ctx)
	if fn == nil {
		panic("redlock: Do with a nil func")
	}
	p, err := s.Acquire(ctx)
	if err != nil {
		return err
	}
	release := func() error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*s.timeout)
		defer cancel()
		return p.Release(ctx)
	}
	returned := false
	defer func() {
		if !returned { // fn panicked, or called runtime.Goexit
			if err := release(); err != nil {
				s.cfg.logger.Warn("redlock: release after a panic in Do incomplete", "semaphore", s.name, "error", err)
			}
		}
	}()
	fnErr := fn(p.held)
	returned = true
	return errors.Join(fnErr, release())
}
