package redlock

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Addresses cannot prove two servers apart: "127.0.0.1:6379" and
// "localhost:6379" are one, and a failover client tells none. So each
// Client checks, on the servers themselves, that no two of its nodes reach
// the same one before their grants count together: each node writes its
// index under the Client's mark, unless another node got there first.

var (
	//go:embed scripts/identify.lua
	identifySource string
	identifyScript = newScript(identifySource)
)

const (
	// identitySuffix follows the key prefix in the name of a Client's
	// mark, and the Client's id follows it.
	identitySuffix = "identity:client:"
	// identityTTL is how long a Client's mark lasts on a server.
	identityTTL = time.Minute
)

// errUnidentified is the reply of a node an acquisition does not call: it
// has not been shown yet to be a server of its own.
var errUnidentified = neverSent(errors.New("not sent: not yet shown to be a server of its own"))

// identity is what a Client knows of its nodes' servers.
type identity struct {
	mu sync.Mutex
	// unknown[i] says that node i has not been shown yet to be a server
	// of its own; nil once every node has been.
	unknown []bool
	// why[i] is why node i is unknown: what its last check got.
	why  []error
	err  error     // nodes found to share a server: permanent
	next time.Time // no new check before then, while nodes are unknown
}

// identify returns the nodes an acquisition must not count yet, or an
// error: permanent if two nodes share a server, or the reasons a quorum of
// nodes could not be checked. While nodes are unknown it checks again, no
// more than once a node timeout: every node writes its mark, known ones
// too, so that an unknown node finds the mark of a known twin. The check
// waits for every node, up to the node timeout, but for nodes already
// known to hang; one that answers after that is recorded all the same.
func (c *Client) identify(ctx context.Context) (skip []error, permanent bool, err error) {
	id := &c.identity
	id.mu.Lock()
	if id.err != nil || id.unknown == nil || time.Now().Before(id.next) {
		defer id.mu.Unlock()
		return id.skip(), id.err != nil, id.err
	}
	timeout := c.cfg.perNodeTimeout()
	id.next = time.Now().Add(timeout)
	id.mu.Unlock()

	r := launch(c, ctx, roundSpec[none]{call: c.identifyCall(), timeout: timeout})
	heard := 0
	out := r.wait(ctx, func(_ int, _ reply[none], pendingHung int) bool {
		heard++
		return heard+pendingHung >= len(c.nodes)
	})
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.err != nil {
		return nil, true, id.err
	}
	for i, rep := range out.replies {
		if id.unknown != nil && id.unknown[i] {
			id.why[i] = r.nodeError(i, rep)
		}
	}
	if known := len(c.nodes) - countTrue(id.unknown); known < quorum(len(c.nodes)) {
		id.next = time.Time{} // check again at the next attempt
		if err := out.notAcquired(); err != nil {
			return nil, out.permanentFailures() > len(c.nodes)-quorum(len(c.nodes)), err
		}
		return nil, false, fmt.Errorf("%w: %d of %d nodes shown to be servers of their own", ErrNoQuorum, known, len(c.nodes))
	}
	return id.skip(), false, nil
}

// skip is the skip of an acquisition round: the nodes still unknown, each
// with why. id.mu is held.
func (id *identity) skip() []error {
	if id.unknown == nil {
		return nil
	}
	skip := make([]error, len(id.unknown))
	for i, unknown := range id.unknown {
		if unknown {
			skip[i] = errUnidentified
			if id.why[i] != nil {
				skip[i] = neverSent(fmt.Errorf("%w: %w", errUnidentified, id.why[i]))
			}
		}
	}
	return skip
}

// identifyCall writes the node's index under the Client's mark, unless
// another node of the Client reached the same server first, and records
// what the server said, whenever it answers.
func (c *Client) identifyCall() nodeCall[none] {
	mark := c.cfg.keyPrefix + identitySuffix + c.notifier.id
	return func(ctx context.Context, n *node, live liveness) reply[none] {
		identify := prepare(identifyScript, []any{mark}, n.index, identityTTL.Milliseconds())
		first, err := identify.run(ctx, n, live).Int64()
		if err == nil {
			c.identity.record(n.index, int(first))
		}
		return reply[none]{ok: err == nil, err: err}
	}
}

// record notes that node i's server holds the mark of node first.
func (id *identity) record(i, first int) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if first != i {
		id.err = errors.Join(id.err, fmt.Errorf("redlock: nodes %d and %d reach the same server; each must be an independent master", first, i))
		return
	}
	if id.unknown == nil || !id.unknown[i] {
		return
	}
	id.unknown[i] = false
	if countTrue(id.unknown) == 0 {
		id.unknown = nil
	}
}

// countTrue counts the true values of bits.
func countTrue(bits []bool) int {
	count := 0
	for _, b := range bits {
		if b {
			count++
		}
	}
	return count
}
