package redlock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
)

// Calls to a hung node outlive the rounds that started them. Once a node has
// not answered for longer than the node timeout, at most maxCallsToHungNode
// calls to it are in flight; past that it is counted as failed at once
// instead of piling up goroutines. maxCallsPerNode is a hard bound for a node
// that answers but is busy, say with thousands of locks extended at once.
const (
	maxCallsToHungNode = 256
	maxCallsPerNode    = 16384
)

// epoch is the reference for the nodes' lastAnswer times: a monotonic clock.
var epoch = time.Now()

// node is one independent Redis master.
type node struct {
	index  int
	addr   string
	client redis.UniversalClient
	// runID is the server's run_id last seen, for noticing restarts.
	runID atomic.Pointer[string]
	// hung is set when a call to the node got no answer in time, and
	// cleared by any answer. Rounds do not wait for hung nodes to decide
	// that they are lost.
	hung atomic.Bool
	// calls owns every goroutine talking to this node; Client.Close waits
	// for it. Its limit is maxCallsPerNode.
	calls errgroup.Group
	// inFlight counts the calls running in calls.
	inFlight atomic.Int32
	// lastAnswer is when a call to the node last ended other than by timing
	// out (an answer, or a refused connection), in nanoseconds since epoch.
	lastAnswer atomic.Int64
	// work hands calls to the node's idle workers.
	work chan task
	// closing is the Client's: workers exit when it is closed.
	closing <-chan struct{}
}

// newNode returns node i, at addr, of a Client that closes closing.
func newNode(i int, addr string, rc redis.UniversalClient, closing <-chan struct{}) *node {
	n := &node{index: i, addr: addr, client: rc, work: make(chan task), closing: closing}
	n.calls.SetLimit(maxCallsPerNode)
	n.lastAnswer.Store(int64(time.Since(epoch))) // not hung before it is tried
	return n
}

// A task is one call to a node: a fan-out round's call, or any other.
type task struct {
	round *round
	f     func()
}

// workerIdle is how long a node's worker goroutine waits for another call
// before it exits.
const workerIdle = 5 * time.Second

// start runs f on a goroutine owned by the node, unless the node has too
// many calls in flight: maxCallsToHungNode if it has not answered within
// timeout, maxCallsPerNode at any time. It reports whether f was started.
func (n *node) start(timeout time.Duration, f func()) bool {
	return n.submit(timeout, task{f: f})
}

// submit hands t to an idle worker of the node, or starts a new one, unless
// the node has too many calls in flight (see start). Workers outlive their
// calls, so a call usually costs no new goroutine, and its stack has
// already grown.
func (n *node) submit(timeout time.Duration, t task) bool {
	if n.inFlight.Add(1) > maxCallsToHungNode && time.Since(epoch)-time.Duration(n.lastAnswer.Load()) > timeout {
		n.inFlight.Add(-1)
		return false
	}
	select {
	case n.work <- t:
		return true
	default:
	}
	started := n.calls.TryGo(func() error {
		n.worker(t)
		return nil
	})
	if !started {
		n.inFlight.Add(-1)
	}
	return started
}

// worker runs t, then the calls handed to it, until it has been idle for
// workerIdle or the Client closes.
func (n *node) worker(t task) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		if t.round != nil {
			t.round.call(n)
		} else {
			t.f()
		}
		n.inFlight.Add(-1)
		idle.Reset(workerIdle)
		select {
		case t = <-n.work:
		case <-idle.C:
			return
		case <-n.closing:
			return
		}
	}
}

// send sends the command newCmd makes of args to the node, and sends it again
// while it fails with EOF: a pooled connection that the server has closed (it
// restarted, say) fails its first command so, before the server could run
// it, and go-redis drops it; the next try takes another connection. A pool
// can hold many such connections, so up to maxResends are tried.
func send[C redis.Cmder](ctx context.Context, n *node, newCmd func(context.Context, ...any) C, args []any) C {
	cmd := newCmd(ctx, args...)
	err := n.client.Process(ctx, cmd)
	for range maxResends {
		if err == nil || !(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) || ctx.Err() != nil {
			break
		}
		cmd = newCmd(ctx, args...)
		err = n.client.Process(ctx, cmd)
	}
	return cmd
}

// maxResends bounds the dead connections one call goes through.
const maxResends = 32

// answered records how a call to the node ended: hung if it timed out.
func (n *node) answered(err error) {
	hung := timedOut(err)
	n.hung.Store(hung)
	if !hung {
		n.lastAnswer.Store(int64(time.Since(epoch)))
	}
}

func (n *node) errorf(err error) error {
	return &NodeError{Node: n.index, Addr: n.addr, Err: err}
}

// reply is one node's answer in a round.
type reply struct {
	ok       bool   // the node did what was asked
	err      error  // the call failed, or its answer does not count; ok is false
	answered bool   // the node answered, or its call could not be made
	counter  uint64 // acquisition: the node's fencing counter
	woke     bool   // release: the node woke a queued waiter
	// extension: extended[j] says whether the node extended the round's
	// j-th lock; meaningful where ok.
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

// timedOut reports whether err means the node did not answer in time, as
// opposed to answering, or refusing the connection.
func timedOut(err error) bool {
	if err == nil {
		return false
	}
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout())
}

// fanOut runs call on every node at once, each bounded by timeout, and returns
// as soon as the round is decided, the timeout passes, or ctx is done. Calls
// still in flight then finish in the background, owned by their node. If the
// round is lost, undo (if not nil) runs for every late reply, so that a grant
// that arrives after the decision is released.
func (c *Client) fanOut(ctx context.Context, timeout time.Duration, call nodeCall, undo nodeCall) outcome {
	return c.launch(ctx, timeout, call, undo, nil).wait(ctx, nil)
}

// skipped names nodes a round does not call, and why.
type skipped struct {
	nodes []bool
	why   error
}

// round is a fan-out in progress, shared by the wait and the node calls,
// which may outlive it. It is also the context of its node calls: it carries
// the caller's values but not its cancellation, since the calls outlive the
// wait, and it ends at the round's deadline, unless every call has finished
// before then, after which nothing uses it.
type round struct {
	mu        sync.Mutex
	replies   []reply
	abandoned bool  // the round was lost, or its lock released: undo late grants
	ctxErr    error // the caller's context ended the wait, with this error
	timedOut  bool  // the timeout ended the wait
	notify    chan int

	nodes       []*node
	timeout     time.Duration
	hungAtStart []bool // nodes that had not answered in time in an earlier round
	pendingHung int    // of those, the ones not heard from yet
	nodeCall    nodeCall
	undo        nodeCall

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

// finished records that a node call ended and its reply was delivered;
// after the last, the deadline timer has nothing left to end: the wait gets
// every reply.
func (r *round) finished() {
	if r.running.Add(-1) == 0 {
		r.expiry.Stop()
	}
}

// call runs the round's call on n and records the reply.
func (r *round) call(n *node) {
	rep := r.nodeCall(r, n)
	n.answered(rep.err)
	undo := r.record(n.index, rep)
	r.finished()
	if undo != nil {
		undoCtx, cancel := context.WithTimeout(context.WithoutCancel(r.parent), r.timeout)
		undo(undoCtx, n)
		cancel()
	}
}

// record stores node i's reply and passes it to the wait. If the round has
// been abandoned, it returns the call that undoes what the node did.
func (r *round) record(i int, rep reply) (undo nodeCall) {
	rep.answered = true
	r.mu.Lock()
	r.replies[i] = rep
	if r.abandoned {
		undo = r.undo
	}
	r.mu.Unlock()
	r.notify <- i
	return undo
}

// launch starts call on every node, each bounded by timeout. The calls are
// owned by their nodes and may outlive the round.
//
// Nodes where skip (if not nil) is true are not called: their reply is the
// error skip names. Their calls are not made, so they say nothing of the
// node's health.
func (c *Client) launch(ctx context.Context, timeout time.Duration, call nodeCall, undo nodeCall, skip *skipped) *round {
	r := &round{
		replies: make([]reply, len(c.nodes)),
		notify:  make(chan int, len(c.nodes)),
		nodes:   c.nodes, timeout: timeout, nodeCall: call, undo: undo,
		parent: ctx, deadline: time.Now().Add(timeout), expired: make(chan struct{}),
	}
	r.running.Store(int32(len(c.nodes)))
	r.expiry = time.AfterFunc(timeout, r.expire)
	for i, n := range c.nodes {
		if n.hung.Load() {
			if r.hungAtStart == nil {
				r.hungAtStart = make([]bool, len(c.nodes))
			}
			r.hungAtStart[i] = true
			r.pendingHung++
		}
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, n := range c.nodes {
		skipped := skip != nil && skip.nodes[n.index]
		if !skipped && !c.closed && n.submit(timeout, task{round: r}) {
			continue
		}
		var err error
		switch {
		case skipped:
			err = skip.why
		case c.closed:
			err = ErrClosed
		default:
			err = errTooBusy
		}
		r.record(n.index, reply{err: err})
		r.finished()
	}
	return r
}

// wait collects the nodes' replies until done says the round is decided, the
// timeout passes, or ctx is done, and returns what the round learned. done is
// called with each reply as it comes, and the number of nodes hung at the
// start that have still not answered. If done is nil, the round is decided
// when a quorum of nodes did what was asked, or can no longer do so.
func (r *round) wait(ctx context.Context, done func(i int, rep reply, pendingHung int) bool) outcome {
	oks, fails := 0, 0
	var ctxErr error
	timedOut := false
	decidedYet := decided(0, 0, r.pendingHung, len(r.nodes))
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
			}
			decidedYet = decided(oks, fails, r.pendingHung, len(r.nodes))
		case <-r.expired:
			if len(r.notify) > 0 {
				continue // every node answered; count the replies
			}
			timedOut = true
			for i, n := range r.nodes {
				if !r.isAnswered(i) {
					n.hung.Store(true)
				}
			}
			break wait
		case <-ctx.Done():
			ctxErr = ctx.Err()
			break wait
		}
	}
	return r.settle(ctxErr, timedOut)
}

func (r *round) isAnswered(i int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.replies[i].answered
}

// settle takes a snapshot of the round and marks it abandoned if it was lost,
// so that nodes answering later undo what they did. ctxErr is the error of the
// caller's context if it ended the wait; timedOut, whether the timeout did.
func (r *round) settle(ctxErr error, timedOut bool) outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctxErr, r.timedOut = ctxErr, timedOut
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
	if !out.won {
		// A won round's failed nodes are not reported: nobody asks.
		out.errs = r.nodeErrors(out.replies)
	}
	r.abandoned = !out.won
	return out
}

// nodeErrors joins a *NodeError for each node among replies that failed, or
// had not answered when the round ended for a reason other than being
// decided: a node not heard from when the round was decided early is
// pending, not failed.
func (r *round) nodeErrors(replies []reply) error {
	var errs []error
	for i, rep := range replies {
		n := r.nodes[i]
		switch {
		case rep.answered && rep.err != nil:
			errs = append(errs, n.errorf(rep.err))
		case rep.answered:
		case r.ctxErr != nil:
			errs = append(errs, n.errorf(fmt.Errorf("no answer before the wait ended: %w", r.ctxErr)))
		case r.timedOut:
			errs = append(errs, n.errorf(fmt.Errorf("no answer within %v: %w", r.timeout, context.DeadlineExceeded)))
		case r.hungAtStart != nil && r.hungAtStart[i]:
			errs = append(errs, n.errorf(fmt.Errorf("not waited for: no answer within %v in an earlier round: %w", r.timeout, context.DeadlineExceeded)))
		}
	}
	return errors.Join(errs...)
}

// abandon marks a won round as undone: nodes that answer from now on run
// the round's undo call.
func (r *round) abandon() {
	r.mu.Lock()
	r.abandoned = true
	r.mu.Unlock()
}

// handOver marks a won acquisition round as undone by release, the call
// that releases the lock: nodes that answer from now on run it as soon as
// they do, so that a grant still in flight cannot land after the release and
// linger for a TTL. It returns which nodes had not answered (nil if all
// had): their release is left to the round, and must not be sent again.
func (r *round) handOver(release nodeCall) (pending []bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.abandoned = true
	r.undo = release
	for i, rep := range r.replies {
		if !rep.answered {
			if pending == nil {
				pending = make([]bool, len(r.replies))
			}
			pending[i] = true
		}
	}
	return pending
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

// validityEnd is the end of a lock's validity when the round that acquired or
// extended it started at start: the spec's validity ttl − elapsed − drift,
// measured from the end of the round, ends at start + ttl − drift. start
// carries a monotonic clock reading, so wall-clock jumps do not move it.
func validityEnd(start time.Time, ttl, drift time.Duration) time.Time {
	return start.Add(ttl - drift)
}

// The node calls of the three rounds.

// acquireCall asks a node for the lock. With fencing it also reads the node's
// counter; with a restart guard, a node up for less than guard does not vote:
// its grant comes back as an error (and is released if the round fails).
func (m *Mutex) acquireCall(value string) nodeCall {
	c, guard, fencing := m.client, m.cfg.restartGuard, m.cfg.fencing
	if !fencing && guard == 0 {
		// A plain command: no script to parse and run on the server. Its
		// arguments are shared by the node calls, which only read them.
		args := []any{"set", m.args.key, value, "px", m.args.ttlMillis, "nx"}
		return func(ctx context.Context, n *node) reply {
			err := send(ctx, n, redis.NewStatusCmd, args).Err()
			if err == redis.Nil {
				return reply{}
			}
			return reply{ok: err == nil, err: err}
		}
	}
	acquire := acquireScript.prepare(m.args.keyAndFence, value, m.args.ttlMillis, flag(fencing), flag(guard > 0))
	return func(ctx context.Context, n *node) reply {
		res, err := acquire.run(ctx, n).Slice()
		if err != nil {
			return reply{err: err}
		}
		if len(res) != 4 {
			return reply{err: fmt.Errorf("acquire script returned %d values; want 4", len(res))}
		}
		granted, _ := res[0].(int64)
		counterText, _ := res[1].(string)
		runID, _ := res[2].(string)
		uptime, _ := res[3].(int64)
		if guard > 0 {
			c.noticeRestart(n, runID, uptime)
			if up := time.Duration(uptime) * time.Second; up < guard {
				return reply{err: fmt.Errorf("%w: up for %v, less than the restart guard %v", errRecentlyRestarted, up, guard)}
			}
		}
		if granted != 1 {
			return reply{}
		}
		counter, err := strconv.ParseUint(counterText, 10, 64)
		if err != nil {
			return reply{err: fmt.Errorf("fencing counter %q: %w", counterText, err)}
		}
		return reply{ok: true, counter: counter}
	}
}

// mutexArgs are a Mutex's keys and TTL as command arguments, made once so
// that each call does not convert them again.
type mutexArgs struct {
	key         any   // the lock's key
	keyAndFence []any // the lock's key and its fencing counter
	keyAndQueue []any // the lock's key and its queue of waiters
	ttlMillis   any   // the TTL in milliseconds
}

func newMutexArgs(key string, ttl time.Duration) mutexArgs {
	return mutexArgs{
		key:         key,
		keyAndFence: []any{key, key + fenceSuffix},
		keyAndQueue: []any{key, key + queueSuffix},
		ttlMillis:   ttl.Milliseconds(),
	}
}

// fenceSuffix names a lock's fencing counter after its key, in the same hash
// slot.
const fenceSuffix = ":fence"

func flag(on bool) string {
	if on {
		return "1"
	}
	return "0"
}

// noticeRestart logs when a node's run_id changes, which means it restarted.
func (c *Client) noticeRestart(n *node, runID string, uptime int64) {
	if runID == "" {
		return
	}
	previous := n.runID.Swap(&runID)
	if previous != nil && *previous != runID {
		c.cfg.logger.Warn("redlock: node restarted; its grants do not count until the restart guard has passed",
			"node", n.index, "addr", n.addr, "run_id", runID, "uptime_seconds", uptime)
	}
}

// fenceCall records token on a node while value still holds the lock there.
func (m *Mutex) fenceCall(value string, token uint64) nodeCall {
	fence := fenceScript.prepare(m.args.keyAndFence, value, token)
	return func(ctx context.Context, n *node) reply {
		res, err := fence.run(ctx, n).Int64()
		return reply{ok: err == nil && res == 1, err: err}
	}
}

// releaseCall deletes the key if value still holds it. With wake it also
// takes the holder's own waiter id (if any) out of the lock's queue and wakes
// the next waiter, by publishing its id on the channel of the waiter's
// Client, which the script finds from the id.
func (m *Mutex) releaseCall(value, waiter string, wake bool) nodeCall {
	channelPrefix := ""
	if wake {
		channelPrefix = wakeChannelPrefix
	}
	release := releaseScript.prepare(m.args.keyAndQueue, value, channelPrefix, waiter)
	return func(ctx context.Context, n *node) reply {
		res, err := release.run(ctx, n).Int64()
		return reply{ok: err == nil && res >= 1, woke: err == nil && res == 2, err: err}
	}
}

// queueSuffix names a lock's queue of waiters after its key, in the same hash
// slot.
const queueSuffix = ":waiters"

// Modes of enqueueCall.
const (
	enqueueLast  = "0"
	enqueueFirst = "1"
	dequeue      = "-"
)

// enqueueCall puts waiter in the lock's queue on a node, or takes it out. The
// reply is ok if the lock is held on the node.
func (m *Mutex) enqueueCall(waiter, mode string) nodeCall {
	key := m.key
	enqueue := enqueueScript.prepare([]any{key + queueSuffix, key, key + queueSuffix + ":left:" + waiter}, waiter, m.queueTTL().Milliseconds(), mode)
	return func(ctx context.Context, n *node) reply {
		held, err := enqueue.run(ctx, n).Int64()
		return reply{ok: err == nil && held == 1, err: err}
	}
}

// releaseLate releases, in the background, the nodes of a lost acquisition
// round that granted the lock or whose answer is unknown. Nodes that answered
// no hold no key of ours; nodes that have not answered yet undo their own
// grant when they do (see fanOut).
func (c *Client) releaseLate(out outcome, release nodeCall, timeout time.Duration) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return
	}
	for i, n := range c.nodes {
		if !out.replies[i].answered || out.replies[i].refused() {
			continue
		}
		// A node too busy to take the call is hung; its key expires.
		n.start(timeout, func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			release(ctx, n)
		})
	}
}
