package redlock

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// Status is what the nodes say of a lock at one moment, as Mutex.Status
// reads it. Its zero value is a free lock.
type Status struct {
	// Held says that a quorum of nodes holds the key, whoever the owner
	// is: this Mutex, another process, another Redlock client (see
	// WithExactKey), or contenders that split the nodes between them, none
	// with a quorum. The lock cannot be acquired while it is held.
	Held bool
	// Mine says that this Mutex holds the lock, in its current acquisition,
	// on a quorum of nodes.
	Mine bool
	// TTL is how long a quorum of the nodes that hold the key will keep
	// it without an extension: the quorum-th longest of their PTTLs. It is
	// 0 when the lock is not held. A key another client set with no expiry
	// counts as the longest Duration.
	TTL time.Duration
	// Waiters is how many waiters are queued for the lock, as a quorum of
	// nodes reports them: the quorum-th largest count. Only waiters of this
	// package queue; waiters whose process died are not counted.
	Waiters int
}

// maxStatusWaiters bounds the queue entries Status looks at on each node.
const maxStatusWaiters = 10000

// Status reads the lock on every node without taking it, and reports whether
// it is held, by whom, for how long, and how many wait for it. It waits for
// every node's answer, each for no longer than the node timeout, and fails
// if fewer than a quorum answered, with their node errors, or if ctx ends
// first. Status.Held is what the Python redlock's locked() reports. It
// panics if ctx is nil.
func (m *Mutex) Status(ctx context.Context) (Status, error) {
	mustContext(ctx)
	if err := m.usable(); err != nil {
		return Status{}, err
	}
	c := m.client
	if !c.enterCall() {
		return Status{}, ErrClosed
	}
	defer c.exitCall()
	if err := ctx.Err(); err != nil {
		return Status{}, fmt.Errorf("redlock: status: %w", err)
	}
	// Only nodes shown to be servers of their own are read; the others
	// count as failed, with why.
	if permanent, err := c.identify(ctx, m.spec.nodeTimeout); permanent {
		return Status{}, fmt.Errorf("redlock: status: %w", err)
	}
	heard := 0
	r := launch(c, ctx, roundSpec[nodeStatus]{call: m.kind.status(), timeout: m.spec.nodeTimeout, waitAll: true})
	out := r.wait(ctx, func(int, reply[nodeStatus], int) bool {
		heard++
		return heard == len(c.nodes)
	})
	if r.ctxErr != nil {
		return Status{}, fmt.Errorf("redlock: status: %d of %d nodes had answered: %w", heard, len(c.nodes), r.ctxErr)
	}
	if out.oks < quorum(len(c.nodes)) {
		return Status{}, fmt.Errorf("redlock: status read from %d of %d nodes, fewer than a quorum: %w", out.oks, len(c.nodes), r.nodeErrors(out.replies))
	}
	return m.status(out.replies), nil
}

// status makes a Status of the nodes' answers.
func (m *Mutex) status(replies []reply[nodeStatus]) Status {
	nodes := len(m.client.nodes)
	var holders []string
	var waiters []int
	for _, rep := range replies {
		if rep.answered && rep.ok {
			holders = append(holders, rep.value.holder)
			waiters = append(waiters, rep.value.waiters)
		}
	}
	var s Status
	slices.Sort(waiters)
	s.Waiters = waiters[len(waiters)-quorum(nodes)]
	var ttls []time.Duration
	for _, rep := range replies {
		if rep.answered && rep.ok && rep.value.holder != "" {
			ttls = append(ttls, rep.value.ttl)
		}
	}
	if len(ttls) < quorum(nodes) {
		return s
	}
	s.Held = true
	slices.Sort(ttls)
	s.TTL = ttls[len(ttls)-quorum(nodes)]
	count, holder := mostCommon(holders)
	if l := m.current.Load(); l != nil && count >= quorum(nodes) && l.value == holder && l.isHeld() {
		s.Mine = true
	}
	return s
}
