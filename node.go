package redlock

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
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
type task struct {
	round *round
	f     func()
}

// workerIdle is how long a node's worker goroutine waits for another call
// before it exits.
const workerIdle = 5 * time.Second

// start runs f on a goroutine owned by the node, unless the node has too
// many calls in flight (see submit). It reports whether f was started.
func (n *node) start(timeout time.Duration, f func()) bool {
	return n.submit(timeout, task{f: f})
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
// can hold many such connections, so up to maxResends are tried. resent
// reports whether the command was sent more than once: the server may then
// have run an earlier copy whose reply was lost.
//
// redlock does this itself rather than through go-redis's MaxRetries, which
// also retries dials in goroutines that outlive the client, and backs off
// between tries while a round's timeout runs.
func send[C redis.Cmder](ctx context.Context, n *node, newCmd func(context.Context, ...any) C, args []any) (cmd C, resent bool) {
	cmd = newCmd(ctx, args...)
	err := n.client.Process(ctx, cmd)
	for range maxResends {
		if err == nil || !(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) || ctx.Err() != nil || !stillWanted(ctx) {
			break
		}
		cmd, resent = newCmd(ctx, args...), true
		err = n.client.Process(ctx, cmd)
	}
	return cmd, resent
}

// stillWanted reports whether a round's call may still be sent, or sent
// again: not once the holding it is for has ended, since each copy is a
// new send.
func stillWanted(ctx context.Context) bool {
	r, ok := ctx.(*round)
	return !ok || r.spec.live == nil || r.spec.live()
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

// leftovers are keys of ours that may still be on a node although nothing
// holds them: a grant or a repair whose reply never came back, or a release
// that got no answer. Such a command may sit unread in a paused server while
// a release sent after it runs first. Once the node answers a command sent
// afterwards, it has run whatever it had been sent before; a release sent
// from then on, and answered, is the last word. Leftovers of one lock are
// released together, with one call for all their values.
type leftovers struct {
	count atomic.Int32 // len(list), read on every answer

	mu       sync.Mutex
	list     []*leftover              // oldest first
	byID     map[leftoverID]*leftover // the same, to find one at once
	flushing bool
	timeout  time.Duration // of the calls that release them
}

// leftoverID names a leftover: a key, and a value it may hold.
type leftoverID struct{ key, value string }

// leftover is one key of ours that may still be on a node.
type leftover struct {
	leftoverID
	since time.Time // when it was remembered
	proof time.Time // when the node first answered a command sent after since; zero until then
}

// maxLeftovers bounds the keys remembered per node, for a node that never
// answers again; the oldest are forgotten first, and expire with their TTL.
const maxLeftovers = 4096

// remember notes that key may still hold value on n; calls to release it
// wait at most timeout.
func (n *node) remember(key, value string, timeout time.Duration) {
	l := &n.leftovers
	id := leftoverID{key, value}
	l.mu.Lock()
	defer l.mu.Unlock()
	if o := l.byID[id]; o != nil {
		o.since, o.proof = time.Now(), time.Time{} // the newest doubt counts
		return
	}
	if len(l.list) == maxLeftovers {
		delete(l.byID, l.list[0].leftoverID)
		l.list = l.list[1:]
	}
	if l.byID == nil {
		l.byID = make(map[leftoverID]*leftover)
	}
	o := &leftover{leftoverID: id, since: time.Now()}
	l.list = append(l.list, o)
	l.byID[id] = o
	l.timeout = max(l.timeout, timeout)
	l.count.Store(int32(len(l.list)))
}

// proven records that n answered a call sent no earlier than sent, and
// releases, in the background, the leftovers remembered before sent.
func (l *leftovers) proven(n *node, sent time.Time) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	due := false
	for _, o := range l.list {
		if o.proof.IsZero() && sent.After(o.since) {
			o.proof = now
		}
		due = due || !o.proof.IsZero()
	}
	if !due || l.flushing {
		return
	}
	l.flushing = true
	timeout := l.timeout
	if !n.start(timeout, func() { l.flush(n, time.Now().Add(2*timeout)) }) {
		l.flushing = false
	}
}

// flush releases the leftovers whose proof has come, one call per lock, and
// forgets those that the node answered. It stops at the first call that
// gets no answer (the node has stopped answering) and at deadline; the rest
// wait for the next proof.
func (l *leftovers) flush(n *node, deadline time.Time) {
	l.mu.Lock()
	byKey := make(map[string][]*leftover)
	var keys []string
	for _, o := range l.list {
		if o.proof.IsZero() {
			continue
		}
		if byKey[o.key] == nil {
			keys = append(keys, o.key)
		}
		byKey[o.key] = append(byKey[o.key], o)
	}
	timeout := l.timeout
	l.mu.Unlock()
	var done []*leftover
	for _, key := range keys {
		if !time.Now().Before(deadline) {
			break
		}
		ctx, cancel := context.WithDeadline(context.Background(), earliest(deadline, time.Now().Add(timeout)))
		err := forget(ctx, n, key, byKey[key])
		cancel()
		if err != nil {
			n.failed(err)
		}
		if err == nil {
			done = append(done, byKey[key]...)
		}
		if !fromServer(err) {
			break
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range done {
		delete(l.byID, o.leftoverID)
	}
	l.list = slices.DeleteFunc(l.list, func(o *leftover) bool { return l.byID[o.leftoverID] != o })
	l.count.Store(int32(len(l.list)))
	l.flushing = false
	// A leftover proven while this flush ran, for a lock it did not
	// cover, would otherwise wait for the node's next answer.
	for _, o := range l.list {
		if !o.proof.IsZero() && byKey[o.key] == nil {
			l.flushing = true
			if !n.start(timeout, func() { l.flush(n, time.Now().Add(2*timeout)) }) {
				l.flushing = false
			}
			return
		}
	}
}

// forget deletes key on n if it holds the value of any of list.
func forget(ctx context.Context, n *node, key string, list []*leftover) error {
	argv := make([]any, len(list))
	for i, o := range list {
		argv[i] = o.value
	}
	return prepare(forgetScript, []any{key}, argv...).run(ctx, n).Err()
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// sweep makes a last attempt, at Close, once no call to n is in flight, to
// release n's leftovers: an answer to PING is the proof, then each gets a
// release. It tries PING once a timeout until an answer comes, for three
// timeouts at most, then releases for two at most; then it forgets them: a
// key on a node that does not answer expires with its TTL.
func (n *node) sweep(timeout time.Duration) {
	if n.leftovers.count.Load() == 0 {
		return
	}
	deadline := time.Now().Add(3 * timeout)
	answered := false
	for !answered && time.Now().Before(deadline) {
		ctx, cancel := context.WithDeadline(context.Background(), earliest(deadline, time.Now().Add(timeout)))
		err := n.client.Ping(ctx).Err()
		answered = fromServer(err)
		if err != nil {
			n.failed(err)
		}
		if !answered {
			<-ctx.Done() // a refused connection fails at once: try again a timeout later
		}
		cancel()
	}
	l := &n.leftovers
	if answered {
		now := time.Now()
		l.mu.Lock()
		for _, o := range l.list {
			if o.proof.IsZero() {
				o.proof = now
			}
		}
		l.mu.Unlock()
		l.flush(n, time.Now().Add(2*timeout))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.list, l.byID = nil, nil
	l.count.Store(0)
}
