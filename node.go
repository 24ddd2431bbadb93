package redlock

import (
	"context"
	"errors"
	"io"
	"log/slog"
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

// node is one independent Redis master. It owns every goroutine that talks
// to it; Client.Close waits for them.
type node struct {
	index  int
	addr   string // "" when New could not tell it from the client
	client redis.UniversalClient
	// runID is the server's run_id last seen, for noticing restarts.
	runID atomic.Pointer[string]
	// hung is set when a call to the node got no answer in time, and
	// cleared by any answer. Rounds do not wait for hung nodes to decide
	// that they are lost.
	hung atomic.Bool
	// scriptsRun is set once a script of the library has run on the node:
	// its ACL allows them.
	scriptsRun atomic.Bool
	// observer and logger are the Client's, for NodeError events.
	observer *Observer
	logger   *slog.Logger
	// calls owns the node's goroutines; its limit is maxCallsPerNode.
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
	// leftovers are keys of ours that may still be on the server.
	leftovers leftovers
	// retries: the client sends a command again by itself after some
	// errors (go-redis's MaxRetries), so a refusal may hide our own grant.
	retries bool
}

// newNode returns node i, at addr, of a Client that closes closing.
func newNode(i int, addr string, rc redis.UniversalClient, closing <-chan struct{}) *node {
	n := &node{index: i, addr: addr, client: rc, work: make(chan task), closing: closing, retries: retriesItself(rc)}
	n.calls.SetLimit(maxCallsPerNode)
	n.lastAnswer.Store(int64(time.Since(epoch))) // not hung before it is tried
	return n
}

// failed tells the Client's observer, if it has one, that a call to n
// failed or got no answer in time. A call that was never sent is not the
// node's failure, unless the node had too many calls in flight.
func (n *node) failed(err error) {
	if err != errTooBusy && notSent(err) {
		return
	}
	if n.observer != nil && n.observer.NodeError != nil {
		observe(n.logger, "NodeError", n.observer.NodeError, NodeErrorEvent{Node: n.index, Addr: n.addr, Err: err})
	}
}

// A task is one call to a node: a round's call, or any other.
type task interface{ run(n *node) }

// taskFunc is a task that is not a round's call.
type taskFunc func()

func (f taskFunc) run(*node) { f() }

// workerIdle is how long a node's worker goroutine waits for another call
// before it exits.
const workerIdle = 5 * time.Second

// spawn runs f on a goroutine owned by the node, unless the node has too
// many calls in flight (see submit). It reports whether f was started.
func (n *node) spawn(timeout time.Duration, f func()) bool {
	return n.submit(timeout, taskFunc(f))
}

// submit hands t to an idle worker of the node, or starts a new one, unless
// the node has too many calls in flight: maxCallsToHungNode if it has not
// answered within timeout, maxCallsPerNode at any time. Workers outlive
// their calls, so a call usually costs no new goroutine, and its stack has
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
		t.run(n)
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
// can hold many such connections, so up to maxResends are tried. resent
// reports whether the command was sent more than once: the server may then
// have run an earlier copy whose reply was lost. A command is not sent again
// once live says it is no longer wanted: each copy is a new send.
//
// redlock does this itself rather than through go-redis's MaxRetries, which
// also retries dials in goroutines that outlive the client, and backs off
// between tries while a round's timeout runs.
//
// A copy refused at the dial did not run, but an earlier copy may have: the
// command then fails with that copy's error, so that the caller does not
// take the refusal for the fate of every copy.
func send[C redis.Cmder](ctx context.Context, n *node, live liveness, newCmd func(context.Context, ...any) C, args []any) (cmd C, resent bool) {
	cmd = newCmd(ctx, args...)
	err := n.client.Process(ctx, cmd)
	var mayHaveRun error // the error of the last copy that may have run
	for range maxResends {
		if err == nil || !(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) || ctx.Err() != nil || !stillWanted(live) {
			break
		}
		mayHaveRun = err
		cmd, resent = newCmd(ctx, args...), true
		err = n.client.Process(ctx, cmd)
	}
	if mayHaveRun != nil && neverRan(err) {
		cmd.SetErr(mayHaveRun)
	}
	return cmd, resent
}

// maxResends bounds the dead connections one call goes through.
const maxResends = 32

// retriesItself reports whether a client may send a command again by itself
// (go-redis's MaxRetries, 3 unless set to -1), where its type tells.
func retriesItself(rc redis.UniversalClient) bool {
	switch rc := rc.(type) {
	case *redis.Client:
		return rc.Options().MaxRetries > 0
	case *redis.ClusterClient:
		return rc.Options().MaxRetries > 0
	case *redis.Ring:
		return rc.Options().MaxRetries > 0
	}
	return true
}

// answered records how a call to the node, sent no earlier than sent,
// ended: hung if it timed out. An answer also shows that the server has run
// what it had been sent before sent, which lets leftovers remembered before
// then be released for good. (A reply to an older command may have been
// written before the server froze, and proves nothing of later ones.)
func (n *node) answered(err error, sent time.Time) {
	hung := timedOut(err)
	n.hung.Store(hung)
	if hung {
		return
	}
	n.lastAnswer.Store(int64(time.Since(epoch)))
	if n.leftovers.count.Load() > 0 && fromServer(err) {
		n.leftovers.proven(n, sent)
	}
}

func (n *node) errorf(err error) error {
	return &NodeError{Node: n.index, Addr: n.addr, Err: err}
}
