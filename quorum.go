package redlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// reply is one node's answer in a round.
type reply struct {
	ok       bool          // the node did what was asked
	err      error         // the call failed, or its answer does not count; ok is false
	answered bool          // the node answered, or its call could not be made
	late     bool          // it came after the round was abandoned
	counter  uint64        // acquire: the node's fencing counter; identify: the node index the server saw first
	woke     bool          // release: the node woke a queued waiter
	unheard  bool          // release: the node could not publish the wake-up
	holder   string        // enqueue, status: the value that holds the lock on the node, or ""
	ttl      time.Duration // status: the key's PTTL
	waiters  int           // status: the live waiters queued on the node
	// extend: extended[j] says whether the node extended the round's j-th
	// lock; meaningful where ok.
	extended []bool
}

// refused reports a definite answer that the node did not do what was asked,
// as opposed to a failure to get an answer.
func (r reply) refused() bool { return !r.ok && r.err == nil }

// nodeCall is one node's part of a round.
type nodeCall func(ctx context.Context, n *node) reply

// outcome is what a round learned by the time it was decided.
type outcome struct {
	won      bool
	oks      int     // nodes that did what was asked
	replies  []reply // replies[i] is meaningful where answered
	refusals int     // nodes that answered no
	errs     error   // if lost: joined *NodeError of nodes that failed or did not answer
	round    *round
}

// quorum is the number of nodes that make a majority of n.
func quorum(n int) int { return n/2 + 1 }

// decided reports whether a round with the given tallies is over: won with a
// quorum of successes, or lost because a quorum can no longer be reached
// without the nodes that are failed or hung (hung counts those not yet heard).
func decided(oks, fails, hung, nodes int) bool {
	return oks >= quorum(nodes) || fails+hung > nodes-quorum(nodes)
}

// validityEnd is the end of a lock's validity when the round that acquired or
// extended it started at start: the spec's validity ttl − elapsed − drift,
// measured from the end of the round, ends at start + ttl − drift. start
// carries a monotonic clock reading, so wall-clock jumps do not move it.
func validityEnd(start time.Time, ttl, drift time.Duration) time.Time {
	return start.Add(ttl - drift)
}

// roundKind says who hears of a round's replies once it no longer waits.
type roundKind uint8

const (
	plainRound   roundKind = iota
	acquireRound           // the holding releases grants that come after it was abandoned
	releaseRound           // the holding remembers releases that got no answer
	repairRound            // the holding releases repairs that land after its end
)

// roundSpec describes a round to launch.
type roundSpec struct {
	call    nodeCall
	timeout time.Duration
	// skip[i], if skip is not nil and skip[i] is not nil, is the reply's
	// error of node i, which is not called: a *notSentError.
	skip    []error
	kind    roundKind
	holding *holding  // the holding of an acquire, release or repair round
	start   time.Time // when the round was decided on, if not at launch
	// waitAll makes the wait hear every node, up to the timeout, even
	// those that did not answer an earlier round in time.
	waitAll bool
	// live, if set, says whether the round's calls are still wanted: the
	// holdings they are for have not ended. A grant or repair is not sent
	// once it says no, and no call is sent again after its connection
	// broke (see send).
	live func() bool
}

// round is a fan-out in progress, shared by the wait and the node calls,
// which may outlive it. It is also the context of its node calls: it carries
// the caller's values but not its cancellation, since the calls outlive the
// wait, and it ends at the round's deadline, unless every call has finished
// before then, after which nothing uses it.
type round struct {
	mu        sync.Mutex
	replies   []reply
	abandoned bool      // replies from now on are late: the holding undoes them
	won       bool      // the round was won: its holding was held
	ctxErr    error     // the caller's context ended the wait, with this error
	timedOut  bool      // the timeout ended the wait
	settled   time.Time // when the wait ended
	notify    chan int

	nodes       []*node
	spec        roundSpec
	start       time.Time
	hungAtStart []bool // nodes that had not answered in time in an earlier round
	pendingHung int    // of those, the ones not heard from yet

	parent   context.Context
	deadline time.Time
	expired  chan struct{} // closed at the deadline
	expiry   *time.Timer
	running  atomic.Int32 // node calls not finished; the last stops expiry
}

func (r *round) Deadline() (time.Time, bool) { return r.deadline, true }
func (r *round) Done() <-chan struct{}       { return r.expired }
func (r *round) Value(key any) any           { return r.parent.Value(key) }
func (r *round) Err() error {
	select {
	case <-r.expired:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func (r *round) expire() { close(r.expired) }

// fanOut runs call on every node at once, each bounded by timeout, and returns
// as soon as a quorum of nodes did what was asked or no longer can, the
// timeout passes, or ctx is done. Calls still in flight then finish in the
// background, owned by their node.
func (c *Client) fanOut(ctx context.Context, timeout time.Duration, call nodeCall) outcome {
	return c.launch(ctx, roundSpec{call: call, timeout: timeout}).wait(ctx, nil)
}

// launch starts the round spec describes on every node. The calls are owned
// by their nodes and may outlive the round. Nodes that spec skips are not
// called: their reply is the error spec names, and says nothing of the
// node's health.
func (c *Client) launch(ctx context.Context, spec roundSpec) *round {
	now := time.Now()
	start := spec.start
	if start.IsZero() {
		start = now
	}
	r := &round{
		replies: make([]reply, len(c.nodes)),
		notify:  make(chan int, len(c.nodes)),
		nodes:   c.nodes, spec: spec, start: start,
		parent: ctx, deadline: now.Add(spec.timeout), expired: make(chan struct{}),
	}
	r.running.Store(int32(len(c.nodes)))
	r.expiry = time.AfterFunc(spec.timeout, r.expire)
	for i, n := range c.nodes {
		if n.hung.Load() {
			if r.hungAtStart == nil {
				r.hungAtStart = make([]bool, len(c.nodes))
			}
			r.hungAtStart[i] = true
			r.pendingHung++
		}
	}
	var busy []*node // nodes to tell the observer of, once c.mu is released
	c.mu.RLock()
	for _, n := range c.nodes {
		skipped := spec.skip != nil && spec.skip[n.index] != nil
		if !skipped && !c.closed && n.submit(spec.timeout, task{round: r}) {
			continue
		}
		var err error
		switch {
		case skipped:
			err = spec.skip[n.index]
		case c.closed:
			err = errNodesClosed
		default:
			err = errTooBusy
		}
		r.record(n.index, reply{err: err})
		r.finished()
		if err == errTooBusy && n.observer != nil {
			busy = append(busy, n)
		}
		if !skipped && spec.kind == releaseRound {
			spec.holding.releaseReplied(n, reply{err: err})
		}
	}
	c.mu.RUnlock()
	for _, n := range busy {
		n.failed(errTooBusy)
	}
	return r
}

// call runs the round's call on n, records the reply, and passes it to the
// round's holding.
func (r *round) call(n *node) {
	var rep reply
	if (r.spec.kind == acquireRound || r.spec.kind == repairRound) && !stillWanted(r) {
		// The holding ended while the call waited for the node: nothing
		// writes its key any more.
		rep = reply{err: errEnded}
	} else {
		sent := time.Now()
		rep = r.spec.call(r, n)
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
	switch r.spec.kind {
	case acquireRound:
		r.spec.holding.acquireReplied(n, rep, late, won)
	case releaseRound:
		r.spec.holding.releaseReplied(n, rep)
	case repairRound:
		r.spec.holding.repairReplied(n, rep)
	}
}

// record stores node i's reply and passes it to the wait. It reports whether
// the round had been abandoned, and whether it had been won.
func (r *round) record(i int, rep reply) (late, won bool) {
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
func (r *round) finished() {
	if r.running.Add(-1) == 0 {
		r.expiry.Stop()
	}
}

// wait collects the nodes' replies until done says the round is decided, the
// timeout passes, or ctx is done, and returns what the round learned. done is
// called with each reply as it comes, and the number of nodes hung at the
// start that have still not answered. If done is nil, the round is decided
// when a quorum of nodes did what was asked, or can no longer do so; a
// release round also waits while a quorum may yet say that the key was
// gone, which means the lock had been lost.
func (r *round) wait(ctx context.Context, done func(i int, rep reply, pendingHung int) bool) outcome {
	oks, fails, refusals := 0, 0, 0
	var ctxErr error
	timedOut := false
	decidedYet := !r.spec.waitAll && decided(0, 0, r.pendingHung, len(r.nodes))
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
			decidedYet = decided(oks, fails, r.pendingHung, len(r.nodes))
			if r.spec.kind == releaseRound && decidedYet && oks < quorum(len(r.nodes)) {
				open := len(r.nodes) - oks - fails - r.pendingHung
				decidedYet = refusals >= quorum(len(r.nodes)) || refusals+open < quorum(len(r.nodes))
			}
		case <-r.expired:
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
	return r.settle(ctxErr, timedOut)
}

// markHung marks the nodes that have not answered by the deadline as hung.
func (r *round) markHung() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, n := range r.nodes {
		if !r.replies[i].answered {
			n.hung.Store(true)
		}
	}
}

// settle takes a snapshot of the round and abandons it if it was lost, so
// that nodes answering later are undone by its holding. ctxErr is the error
// of the caller's context if it ended the wait; timedOut, whether the
// timeout did.
func (r *round) settle(ctxErr error, timedOut bool) outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctxErr, r.timedOut, r.settled = ctxErr, timedOut, time.Now()
	out := outcome{replies: append([]reply(nil), r.replies...), round: r}
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
func (r *round) nodeErrors(replies []reply) error {
	var errs []error
	for i, rep := range replies {
		if err := r.nodeError(i, rep); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// nodeError is node i's *NodeError for nodeErrors, or nil.
func (r *round) nodeError(i int, rep reply) error {
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
func (o outcome) notAcquired() error {
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
// holding undoes them as they come. It says which nodes had answered in a
// way that may have left the holding's key (anything but a refusal, a
// refused connection or a call never sent: a script can fail after it wrote), which must be
// released now, and of those, which failed so that the command may yet
// land. Nodes not yet heard from are left to their late replies.
func (r *round) abandon() (release, unsure []bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.abandoned = true
	for i, rep := range r.replies {
		if !rep.answered || rep.late {
			continue
		}
		if !rep.refused() && !neverRan(rep.err) {
			release = setBit(release, i, len(r.replies))
		}
		if maybeRan(rep.err) {
			unsure = setBit(unsure, i, len(r.replies))
		}
	}
	return release, unsure
}

// handOver abandons a won round at the end of its holding. It says which
// nodes have not answered yet (their late replies release them, so the
// holding's release must skip them) and which answered with an error that
// leaves their grant in doubt.
func (r *round) handOver() (pending, unsure []bool) {
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

// token is the fencing token a won acquisition round earns: one more than
// the largest counter among the nodes that granted it.
func (o outcome) token() uint64 {
	var largest uint64
	for _, r := range o.replies {
		if r.answered && r.ok {
			largest = max(largest, r.counter)
		}
	}
	return largest + 1
}

// woke reports whether any node woke a queued waiter.
func (o outcome) woke() bool {
	for _, r := range o.replies {
		if r.answered && r.woke {
			return true
		}
	}
	return false
}

// permanentFailures counts the nodes whose error retrying cannot fix.
func (o outcome) permanentFailures() int {
	count := 0
	for _, r := range o.replies {
		if r.answered && r.err != nil && permanent(r.err) {
			count++
		}
	}
	return count
}
