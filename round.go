package redlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// A round sends one call to every node at once and counts the answers. It
// knows no kind of lock: its caller says what each node is asked (a
// nodeCall), what a reply means once the round no longer waits (heard), and
// when the round is decided. R is what a call reports beyond success.

// reply is one node's answer in a round.
type reply[R any] struct {
	ok       bool  // the node did what was asked
	err      error // the call failed, or its answer does not count; ok is false
	answered bool  // the node answered, or its call could not be made
	late     bool  // it came after the round was abandoned
	value    R     // what the call reports, as its nodeCall says
}

// refused reports a definite answer that the node did not do what was asked,
// as opposed to a failure to get an answer.
func (r reply[R]) refused() bool { return !r.ok && r.err == nil }

// nodeCall is one node's part of a round. live says whether the call is
// still wanted; send asks it before it sends the command again.
type nodeCall[R any] func(ctx context.Context, n *node, live liveness) reply[R]

// liveness says whether a round's calls are still wanted: the leases they
// are for have not ended. A nil liveness always says yes.
type liveness interface{ wanted() bool }

// stillWanted reports whether calls that live describes are still wanted.
func stillWanted(live liveness) bool { return live == nil || live.wanted() }

// hearer hears each reply of a round, on its node's goroutine, once the
// reply is recorded, however late: with late set if the round had been
// abandoned by then, and won if it had been won. A node not called because
// of the round's skip is not heard; one not called because it was busy or
// the Client closed is.
type hearer[R any] interface {
	heard(n *node, rep reply[R], late, won bool)
}

// none is the report of a call that reports nothing beyond success.
type none struct{}

// outcome is what a round learned by the time it was decided.
type outcome[R any] struct {
	won      bool
	oks      int        // nodes that did what was asked
	replies  []reply[R] // replies[i] is meaningful where answered
	refusals int        // nodes that answered no
	errs     error      // if lost: joined *NodeError of nodes that failed or did not answer
	round    *round[R]
}

// quorum is the number of nodes that make a majority of n.
func quorum(n int) int { return n/2 + 1 }

// decided reports whether a round with the given tallies is over: won with a
// quorum of successes, or lost because a quorum can no longer be reached
// without the nodes that are failed or hung (hung counts those not yet heard).
func decided(oks, fails, hung, nodes int) bool {
	return oks >= quorum(nodes) || fails+hung > nodes-quorum(nodes)
}

// validityEnd is the end of a lease's validity when the round that acquired
// or extended it started at start: the spec's validity ttl − elapsed − drift,
// measured from the end of the round, ends at start + ttl − drift. start
// carries a monotonic clock reading, so wall-clock jumps do not move it.
func validityEnd(start time.Time, ttl, drift time.Duration) time.Time {
	return start.Add(ttl - drift)
}

// roundSpec describes a round to launch.
type roundSpec[R any] struct {
	call    nodeCall[R]
	timeout time.Duration
	// skip[i], where skip is not nil and skip[i] is not nil, is the reply
	// error of node i, which is not called: a *notSentError.
	skip []error
	// start is when the round was decided on, if not at launch.
	start time.Time
	// waitAll makes the wait hear every node, up to the timeout, even
	// those that did not answer an earlier round in time.
	waitAll bool
	// live says whether the calls are still wanted. A call that waited for
	// its node is not sent once it says no (an ended lease writes its key
	// no more), and no call is sent again after its connection broke.
	live liveness
	// resendLive, for a round without live, says only whether a call may
	// be sent again after its connection broke: the first send goes out
	// whatever happened meanwhile.
	resendLive liveness
	// heard, if set, hears each node's reply.
	heard hearer[R]
	// untilRefused makes a lost round wait while a quorum of refusals may
	// still come: a release learns from them that the lock had been lost.
	untilRefused bool
	// anyNode lets the round call nodes not verified to be servers of
	// their own (see identity.go): the check itself, and the rounds that
	// only undo what a lease may have left. Other rounds call only the
	// verified set they read as they start.
	anyNode bool
}

// round is a fan-out in progress, shared by the wait and the node calls,
// which may outlive it. It is also the context of its node calls: it carries
// the caller's values but not its cancellation, since the calls outlive the
// wait, and it ends at the round's deadline, unless every call has finished
// before then, after which nothing uses it.
type round[R any] struct {
	mu        sync.Mutex
	replies   []reply[R]
	abandoned bool      // replies from now on are late: heard undoes them
	won       bool      // the round was won
	ctxErr    error     // the caller's context ended the wait, with this error
	timedOut  bool      // the timeout ended the wait
	concluded time.Time // when the wait ended
	notify    chan int

	nodes       []*node
	spec        roundSpec[R]
	start       time.Time
	hungAtStart []bool // nodes that had not answered in time in an earlier round
	pendingHung int    // of those, the ones not heard from yet

	parent   context.Context
	deadline time.Time
	due      chan struct{} // closed at the deadline
	dueTimer *time.Timer
	running  atomic.Int32 // node calls not finished; the last stops dueTimer
}

func (r *round[R]) Deadline() (time.Time, bool) { return r.deadline, true }
func (r *round[R]) Done() <-chan struct{}       { return r.due }
func (r *round[R]) Value(key any) any           { return r.parent.Value(key) }
func (r *round[R]) Err() error {
	select {
	case <-r.due:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func (r *round[R]) reachDeadline() { close(r.due) }

// fanOut runs call on every node at once, each bounded by timeout, and returns
// as soon as a quorum of nodes did what was asked or no longer can, the
// timeout passes, or ctx is done. Calls still in flight then finish in the
// background, owned by their node.
func fanOut[R any](c *Client, ctx context.Context, timeout time.Duration, call nodeCall[R]) outcome[R] {
	return launch(c, ctx, roundSpec[R]{call: call, timeout: timeout}).wait(ctx, nil)
}

// launch starts the round spec describes on every node of c. The calls are
// owned by their nodes and may outlive the round. Nodes that spec skips are
// not called: their reply is the error spec names, and says nothing of the
// node's health.
func launch[R any](c *Client, ctx context.Context, spec roundSpec[R]) *round[R] {
	now := time.Now()
	start := spec.start
	if start.IsZero() {
		start = now
	}
	r := &round[R]{
		replies: make([]reply[R], len(c.nodes)),
		notify:  make(chan int, len(c.nodes)),
		nodes:   c.nodes, spec: spec, start: start,
		parent: ctx, deadline: now.Add(spec.timeout), due: make(chan struct{}),
	}
	r.running.Store(int32(len(c.nodes)))
	r.dueTimer = time.AfterFunc(spec.timeout, r.reachDeadline)
	for i, n := range c.nodes {
		if n.hung.Load() {
			if r.hungAtStart == nil {
				r.hungAtStart = make([]bool, len(c.nodes))
			}
			r.hungAtStart[i] = true
			r.pendingHung++
		}
	}
	type unsent struct {
		n   *node
		err error
	}
	var failed []unsent // nodes not called, to hear once c.mu is released
	verified := c.identity.verified()
	c.mu.RLock()
	for _, n := range c.nodes {
		if spec.skip != nil && spec.skip[n.index] != nil {
			r.record(n.index, reply[R]{err: spec.skip[n.index]})
			r.finished()
			continue
		}
		if !spec.anyNode && !verified[n.index] {
			r.record(n.index, reply[R]{err: c.identity.refusal(n.index)})
			r.finished()
			continue
		}
		if !c.callsStopped && n.submit(spec.timeout, r) {
			continue
		}
		err := errTooBusy
		if c.callsStopped {
			err = errNodesClosed
		}
		failed = append(failed, unsent{n, err})
	}
	c.mu.RUnlock()
	for _, f := range failed {
		rep := reply[R]{err: f.err}
		late, won := r.record(f.n.index, rep)
		r.finished()
		f.n.failed(f.err)
		if spec.heard != nil {
			spec.heard.heard(f.n, rep, late, won)
		}
	}
	return r
}

// run runs the round's call on n, records the reply, and passes it to the
// round's heard.
func (r *round[R]) run(n *node) {
	var rep reply[R]
	if !stillWanted(r.spec.live) {
		// The lease ended while the call waited for the node: nothing
		// writes its key any more.
		rep = reply[R]{err: errEnded}
	} else {
		live := r.spec.live
		if live == nil {
			live = r.spec.resendLive
		}
		sent := time.Now()
		rep = r.spec.call(r, n, live)
		rep.err = asSent(rep.err)
		if !notSent(rep.err) {
			n.answered(rep.err, sent)
			if rep.err != nil {
				n.failed(rep.err)
			}
		}
	}
	late, won := r.record(n.index, rep)
	r.finished()
	if r.spec.heard != nil {
		r.spec.heard.heard(n, rep, late, won)
	}
}

// record stores node i's reply and passes it to the wait. It reports whether
// the round had been abandoned, and whether it had been won.
func (r *round[R]) record(i int, rep reply[R]) (late, won bool) {
	rep.answered = true
	r.mu.Lock()
	rep.late, won = r.abandoned, r.won
	r.replies[i] = rep
	r.mu.Unlock()
	r.notify <- i
	return rep.late, won
}

// finished records that a node call ended and its reply was delivered;
// after the last, the deadline timer has nothing left to end: the wait gets
// every reply.
func (r *round[R]) finished() {
	if r.running.Add(-1) == 0 {
		r.dueTimer.Stop()
	}
}

// wait collects the nodes' replies until done says the round is decided, the
// timeout passes, or ctx is done, and returns what the round learned. done is
// called with each reply as it comes, and the number of nodes hung at the
// start that have still not answered. If done is nil, the round is decided
// when a quorum of nodes did what was asked, or can no longer do so (and,
// with untilRefused, no quorum of refusals can come any more).
func (r *round[R]) wait(ctx context.Context, done func(i int, rep reply[R], pendingHung int) bool) outcome[R] {
	oks, fails, refusals := 0, 0, 0
	var ctxErr error
	timedOut := false
	nodes := len(r.nodes)
	decidedYet := !r.spec.waitAll && decided(0, 0, r.pendingHung, nodes)
wait:
	for !decidedYet {
		select {
		case i := <-r.notify:
			r.mu.Lock()
			rep := r.replies[i]
			r.mu.Unlock()
			if r.hungAtStart != nil && r.hungAtStart[i] {
				r.pendingHung--
			}
			if done != nil {
				decidedYet = done(i, rep, r.pendingHung)
				break
			}
			if rep.ok {
				oks++
			} else {
				fails++
				if rep.refused() {
					refusals++
				}
			}
			decidedYet = decided(oks, fails, r.pendingHung, nodes)
			if r.spec.untilRefused && decidedYet && oks < quorum(nodes) {
				open := nodes - oks - fails - r.pendingHung
				decidedYet = refusals >= quorum(nodes) || refusals+open < quorum(nodes)
			}
		case <-r.due:
			if len(r.notify) > 0 {
				continue // every node answered; count the replies
			}
			timedOut = true
			r.markHung()
			break wait
		case <-ctx.Done():
			ctxErr = ctx.Err()
			break wait
		}
	}
	return r.conclude(ctxErr, timedOut)
}

// markHung marks the nodes that have not answered by the deadline as hung.
func (r *round[R]) markHung() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, n := range r.nodes {
		if !r.replies[i].answered {
			n.hung.Store(true)
		}
	}
}

// conclude takes a snapshot of the round and abandons it if it was lost, so
// that replies from now on reach heard as late. ctxErr is the error of the
// caller's context if it ended the wait; timedOut, whether the timeout did.
func (r *round[R]) conclude(ctxErr error, timedOut bool) outcome[R] {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctxErr, r.timedOut, r.concluded = ctxErr, timedOut, time.Now()
	out := outcome[R]{replies: append([]reply[R](nil), r.replies...), round: r}
	for _, rep := range out.replies {
		switch {
		case !rep.answered:
		case rep.ok:
			out.oks++
		case rep.err == nil:
			out.refusals++
		}
	}
	out.won = ctxErr == nil && out.oks >= quorum(len(r.nodes))
	r.won = out.won
	if !out.won {
		// A won round's failed nodes are not reported: nobody asks.
		out.errs = r.nodeErrors(out.replies)
		r.abandoned = true
	}
	return out
}

// nodeErrors joins a *NodeError for each node among replies that failed, or
// had not answered when the round ended for a reason other than being
// decided: a node not heard from when the round was decided early is
// pending, not failed.
func (r *round[R]) nodeErrors(replies []reply[R]) error {
	var errs []error
	for i, rep := range replies {
		if err := r.nodeError(i, rep); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// nodeError is node i's *NodeError for nodeErrors, or nil.
func (r *round[R]) nodeError(i int, rep reply[R]) error {
	n := r.nodes[i]
	switch {
	case rep.answered && rep.err != nil:
		return n.errorf(rep.err)
	case rep.answered:
		return nil
	case r.ctxErr != nil:
		return n.errorf(fmt.Errorf("no answer before the wait ended: %w", r.ctxErr))
	case r.timedOut:
		return n.errorf(fmt.Errorf("no answer within %v: %w", r.spec.timeout, context.DeadlineExceeded))
	case r.hungAtStart != nil && r.hungAtStart[i]:
		return n.errorf(fmt.Errorf("not waited for: no answer within %v in an earlier round: %w", r.spec.timeout, context.DeadlineExceeded))
	}
	return nil
}

// notAcquired says why a lost round did not get the lock: ErrTaken if any
// node refused, and ErrNoQuorum, with the node errors, if any node failed or
// did not answer in time; both, joined, when both apply. A node not heard
// from because the caller's wait ended has not failed: the wait's end is
// reported by itself. It returns nil if no node did either.
func (o outcome[R]) notAcquired() error {
	nodes := len(o.replies)
	var taken, failed error
	if o.refusals > 0 {
		taken = fmt.Errorf("%w: %d of %d nodes refused", ErrTaken, o.refusals, nodes)
	}
	var errs []error
	for i, rep := range o.replies {
		if rep.answered || o.round.ctxErr == nil {
			if err := o.round.nodeError(i, rep); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if errs != nil {
		failed = fmt.Errorf("%w: %d of %d nodes granted it: %w", ErrNoQuorum, o.oks, nodes, errors.Join(errs...))
	}
	return errors.Join(taken, failed)
}

// abandon marks the round as undone: replies from now on are late, and its
// heard undoes them as they come. It says which nodes had answered in a
// way that may have left a key of the call (anything but a refusal, a
// refused connection or a call never sent: a script can fail after it
// wrote), which must be released now, and of those, which failed so that
// the command may yet land, and how many refused. Nodes not yet heard from
// are left to their late replies.
func (r *round[R]) abandon() (release, unsure []bool, refusals int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.abandoned = true
	for i, rep := range r.replies {
		if !rep.answered || rep.late {
			continue
		}
		if rep.refused() {
			refusals++
		}
		if !rep.refused() && !neverRan(rep.err) {
			release = setBit(release, i, len(r.replies))
		}
		if maybeRan(rep.err) {
			unsure = setBit(unsure, i, len(r.replies))
		}
	}
	return release, unsure, refusals
}

// handOver abandons a won round once its lease ends. It says which nodes
// have not answered yet (their late replies release them, so the lease's
// release must skip them) and which answered with an error that leaves
// their grant in doubt.
func (r *round[R]) handOver() (pending, unsure []bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.abandoned = true
	for i, rep := range r.replies {
		switch {
		case !rep.answered:
			pending = setBit(pending, i, len(r.replies))
		case !rep.late && maybeRan(rep.err):
			unsure = setBit(unsure, i, len(r.replies))
		}
	}
	return pending, unsure
}

// permanentFailures counts the nodes whose error retrying cannot fix.
func (o outcome[R]) permanentFailures() int {
	count := 0
	for _, r := range o.replies {
		if r.answered && r.err != nil && permanent(r.err) {
			count++
		}
	}
	return count
}

// setBit sets bits[i], making bits n long if it is nil.
func setBit(bits []bool, i, n int) []bool {
	if bits == nil {
		bits = make([]bool, n)
	}
	bits[i] = true
	return bits
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
