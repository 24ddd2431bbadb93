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
	// Held says that a quorum of nodes holds the key for one owner,
	// whoever it is: this Mutex, another process, or another Redlock
	// client (see WithExactKey).
	Held bool
	// Mine says that the owner is this Mutex, in its current acquisition.
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
	if !c.enter() {
		return Status{}, ErrClosed
	}
	defer c.leave()
	heard := 0
	r := c.launch(ctx, roundSpec{call: m.statusCall(), timeout: m.cfg.perNodeTimeout()})
	out := r.wait(ctx, func(_ int, _ reply, pendingHung int) bool {
		heard++
		return heard+pendingHung >= len(c.nodes)
	})
	if out.oks < quorum(len(c.nodes)) {
		if err := ctx.Err(); err != nil {
			return Status{}, fmt.Errorf("redlock: status: %w", err)
		}
		return Status{}, fmt.Errorf("redlock: status read from %d of %d nodes, fewer than a quorum: %w", out.oks, len(c.nodes), r.nodeErrors(out.replies))
	}
	return m.status(out.replies), nil
}

// status makes a Status of the nodes' answers.
func (m *Mutex) status(replies []reply) Status {
	nodes := len(m.client.nodes)
	var holders []string
	var waiters []int
	for _, rep := range replies {
		if rep.answered && rep.ok {
			holders = append(holders, rep.holder)
			waiters = append(waiters, rep.waiters)
		}
	}
	var s Status
	slices.Sort(waiters)
	s.Waiters = waiters[len(waiters)-quorum(nodes)]
	count, holder := mostCommon(holders)
	if count < quorum(nodes) {
		return s
	}
	s.Held = true
	if h := m.current.Load(); h != nil && h.value == holder && h.isHeld() {
		s.Mine = true
	}
	var ttls []time.Duration
	for _, rep := range replies {
		if rep.answered && rep.ok && rep.holder == holder {
			ttls = append(ttls, rep.ttl)
		}
	}
	slices.Sort(ttls)
	s.TTL = ttls[len(ttls)-quorum(nodes)]
	return s
}
