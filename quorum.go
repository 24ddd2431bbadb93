package redlock

import (
	"context"
	"errors"
	"fmt"
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
}

// start runs f in a goroutine owned by the node, unless the node has too many
// calls in flight: maxCallsToHungNode if it has not answered within timeout,
// maxCallsPerNode at any time. It reports whether f was started.
func (n *node) start(timeout time.Duration, f func()) bool {
	if n.inFlight.Add(1) > maxCallsToHungNode && time.Since(epoch)-time.Duration(n.lastAnswer.Load()) > timeout {
		n.inFlight.Add(-1)
		return false
	}
	started := n.calls.TryGo(func() error {
		defer n.inFlight.Add(-1)
		f()
		return nil
	})
	if !started {
		n.inFlight.Add(-1)
	}
	return started
}

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
	ok      bool   // the node did what was asked
	err     error  // the call failed, or its answer does not count; ok is false
	counter uint64 // acquisition: the node's fencing counter
	woke    bool   // release: the node woke a queued waiter
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
	replies  []reply // replies[i] is meaningful where answered[i]
	answered []bool
	refusals int   // nodes that answered no
	errs     error // joined *NodeError of nodes that failed or did not answer
	round    *roundState
}

// roundState is shared between a round and its node goroutines, which may
// outlive it.
type roundState struct {
	mu        sync.Mutex
	replies   []reply
	answered  []bool
	abandoned bool // the round was lost, or its lock released: undo late grants
	notify    chan int
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
	r := c.launch(ctx, timeout, call, undo)
	oks, fails := 0, 0
	return r.wait(ctx, func(_ int, rep reply, pendingHung int) bool {
		if rep.ok {
			oks++
		} else {
			fails++
		}
		return decided(oks, fails, pendingHung, len(c.nodes))
	})
}

// round is a fan-out in progress.
type round struct {
	state       *roundState
	nodes       []*node
	timeout     time.Duration
	hungAtStart []bool // nodes that had not answered in time in an earlier round
	pendingHung int    // of those, the ones not heard from yet
}

// launch starts call on every node, each bounded by timeout. The calls are
// owned by their nodes and may outlive the round.
func (c *Client) launch(ctx context.Context, timeout time.Duration, call nodeCall, undo nodeCall) *round {
	state := &roundState{
		replies:  make([]reply, len(c.nodes)),
		answered: make([]bool, len(c.nodes)),
		notify:   make(chan int, len(c.nodes)),
	}
	r := &round{state: state, nodes: c.nodes, timeout: timeout, hungAtStart: make([]bool, len(c.nodes))}
	// One deadline bounds every call of the round. The calls outlive the
	// wait, so the round's context is not the caller's; the last call to
	// finish releases its timer.
	callCtx, cancelCalls := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	var running atomic.Int32
	running.Store(int32(len(c.nodes)))
	finished := func() {
		if running.Add(-1) == 0 {
			cancelCalls()
		}
	}
	for i, n := range c.nodes {
		if n.hung.Load() {
			r.hungAtStart[i] = true
			r.pendingHung++
		}
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, n := range c.nodes {
		started := !c.closed && n.start(timeout, func() {
			rep := call(callCtx, n)
			finished()
			n.answered(rep.err)
			state.mu.Lock()
			state.replies[n.index] = rep
			state.answered[n.index] = true
			abandoned := state.abandoned
			state.mu.Unlock()
			state.notify <- n.index
			if abandoned && undo != nil {
				undoCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
				undo(undoCtx, n)
				cancel()
			}
		})
		if !started {
			finished()
			err := errTooBusy
			if c.closed {
				err = ErrClosed
			}
			state.mu.Lock()
			state.replies[n.index] = reply{err: err}
			state.answered[n.index] = true
			state.mu.Unlock()
			state.notify <- n.index
		}
	}
	return r
}

// wait collects the nodes' replies until done says the round is decided, the
// timeout passes, or ctx is done, and returns what the round learned. done is
// called with each reply as it comes, and the number of nodes hung at the
// start that have still not answered.
func (r *round) wait(ctx context.Context, done func(i int, rep reply, pendingHung int) bool) outcome {
	state := r.state
	timer := time.NewTimer(r.timeout)
	defer timer.Stop()
	var ctxErr error
	timedOut := false
	decidedYet := decided(0, 0, r.pendingHung, len(r.nodes))
wait:
	for !decidedYet {
		select {
		case i := <-state.notify:
			state.mu.Lock()
			rep := state.replies[i]
			state.mu.Unlock()
			if r.hungAtStart[i] {
				r.pendingHung--
			}
			decidedYet = done(i, rep, r.pendingHung)
		case <-timer.C:
			timedOut = true
			for i, n := range r.nodes {
				if !state.isAnswered(i) {
					n.hung.Store(true)
				}
			}
			break wait
		case <-ctx.Done():
			ctxErr = ctx.Err()
			break wait
		}
	}
	return state.settle(ctxErr, timedOut, r.hungAtStart, r.timeout, r.nodes)
}

func (s *roundState) isAnswered(i int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answered[i]
}

// settle takes a snapshot of the round and marks it abandoned if it was lost,
// so that nodes answering later undo what they did. ctxErr is the error of the
// caller's context if it ended the wait; timedOut, whether the timeout did;
// hung, which nodes the round did not wait for.
func (s *roundState) settle(ctxErr error, timedOut bool, hung []bool, timeout time.Duration, nodes []*node) outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := outcome{
		replies:  append([]reply(nil), s.replies...),
		answered: append([]bool(nil), s.answered...),
		round:    s,
	}
	var errs []error
	for i, r := range out.replies {
		switch {
		case !out.answered[i]:
			// A node that had not answered when the round was decided
			// early is pending, not failed.
			if ctxErr != nil {
				errs = append(errs, nodes[i].errorf(fmt.Errorf("no answer before the wait ended: %w", ctxErr)))
			} else if timedOut {
				errs = append(errs, nodes[i].errorf(fmt.Errorf("no answer within %v: %w", timeout, context.DeadlineExceeded)))
			} else if hung[i] {
				errs = append(errs, nodes[i].errorf(fmt.Errorf("not waited for: no answer within %v in an earlier round: %w", timeout, context.DeadlineExceeded)))
			}
		case r.ok:
			out.oks++
		case r.err != nil:
			errs = append(errs, nodes[i].errorf(r.err))
		default:
			out.refusals++
		}
	}
	out.won = ctxErr == nil && out.oks >= quorum(len(nodes))
	out.errs = errors.Join(errs...)
	s.abandoned = !out.won
	return out
}

// abandon marks a won round as undone: nodes that answer from now on run the
// round's undo call. Unlock calls it so that a grant still in flight when
// the lock is released cannot land after the release and linger for a TTL.
func (s *roundState) abandon() {
	s.mu.Lock()
	s.abandoned = true
	s.mu.Unlock()
}

// token is the fencing token a won acquisition round earns: one more than
// the largest counter among the nodes that granted it.
func (o outcome) token() uint64 {
	var largest uint64
	for i, r := range o.replies {
		if o.answered[i] && r.ok {
			largest = max(largest, r.counter)
		}
	}
	return largest + 1
}

// woke reports whether any node woke a queued waiter.
func (o outcome) woke() bool {
	for i, r := range o.replies {
		if o.answered[i] && r.woke {
			return true
		}
	}
	return false
}

// permanentFailures counts the nodes whose error retrying cannot fix.
func (o outcome) permanentFailures() int {
	count := 0
	for i, r := range o.replies {
		if o.answered[i] && r.err != nil && permanent(r.err) {
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
func (c *Client) acquireCall(key, value string, ttl, guard time.Duration, fencing bool) nodeCall {
	if !fencing && guard == 0 {
		// A plain command: no script to parse and run on the server. Its
		// arguments are shared by the node calls, which only read them.
		args := []any{"set", key, value, "px", ttl.Milliseconds(), "nx"}
		return func(ctx context.Context, n *node) reply {
			cmd := redis.NewStatusCmd(ctx, args...)
			err := n.client.Process(ctx, cmd)
			if err == redis.Nil {
				return reply{}
			}
			return reply{ok: err == nil, err: err}
		}
	}
	acquire := acquireScript.prepare([]string{key, key + fenceSuffix}, value, ttl.Milliseconds(), flag(fencing), flag(guard > 0))
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
func fenceCall(key, value string, token uint64) nodeCall {
	fence := fenceScript.prepare([]string{key, key + fenceSuffix}, value, token)
	return func(ctx context.Context, n *node) reply {
		res, err := fence.run(ctx, n).Int64()
		return reply{ok: err == nil && res == 1, err: err}
	}
}

// releaseCall deletes the key if value still holds it. With wake it also
// takes the holder's own waiter id (if any) out of the lock's queue and wakes
// the next waiter, by publishing its id on the lock's channel, which is named
// like its key.
func releaseCall(key, value, waiter string, wake bool) nodeCall {
	channel := ""
	if wake {
		channel = key
	}
	release := releaseScript.prepare([]string{key, key + queueSuffix}, value, channel, waiter)
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
func enqueueCall(key, waiter string, queueTTL time.Duration, mode string) nodeCall {
	enqueue := enqueueScript.prepare([]string{key + queueSuffix, key, key + queueSuffix + ":left:" + waiter}, waiter, queueTTL.Milliseconds(), mode)
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
		if !out.answered[i] || out.replies[i].refused() {
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
