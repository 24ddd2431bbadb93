package redlock

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Addresses cannot prove two servers apart: "127.0.0.1:6379" and
// "localhost:6379" are one, so are two DB numbers of one server, and a
// failover client tells no address at all. So a Client checks on the
// servers themselves that no two of its nodes reach the same one, before it
// counts a node toward any quorum. Each node loads a script of its own, its
// fingerprint, into its server's script cache, then asks the server whether
// it has the fingerprint of any other node of the Client. A server has one
// script cache, whatever the address or DB it is reached by, so of two
// nodes on one server, the one that asks last finds the other's. A node is
// verified once its server has its fingerprint and no other's; only
// verified nodes are sent a round's calls (see launch). A restart empties a
// server's script cache, so every node is checked again once a minute.

const (
	// identityRecheck is how often verified nodes are checked again.
	identityRecheck = time.Minute
	// identityGraceFactor bounds how long the check waits for the other
	// nodes once a quorum is verified: that many times as long as the
	// quorum took, plus a tenth of the node timeout. On a healthy network
	// every node has answered long before; a node that is slower is
	// checked all the same, and counts once it answers.
	identityGraceFactor = 2
)

// errUnidentified is the reply of a node a round does not call: it has not
// been shown yet to be a server of its own.
var errUnidentified = neverSent(errors.New("not sent: not yet shown to be a server of its own"))

// identity is what a Client knows of its nodes' servers.
type identity struct {
	fingerprints []string // node i's script
	hashes       []string // their SHA1s, in hex

	mu      sync.Mutex
	why     []error       // what node i's last check got, while it is not verified
	err     error         // two nodes reach one server: permanent
	check   chan struct{} // closed when the check in flight ends; nil if none
	next    time.Time     // no new check before then
	pending int           // nodes not verified
}

// init readies the identity of a Client of the given id with nodes nodes,
// none verified.
func (id *identity) init(clientID string, nodes int) {
	id.why, id.pending = make([]error, nodes), nodes
	for i := range nodes {
		source := fmt.Sprintf("return 'redlock: fingerprint of node %d of client %s'", i, clientID)
		sum := sha1.Sum([]byte(source))
		id.fingerprints = append(id.fingerprints, source)
		id.hashes = append(id.hashes, hex.EncodeToString(sum[:]))
	}
}

// identify makes sure, before an acquisition, that a quorum of nodes is
// verified, checking the unverified ones if none is being checked and the
// last check was at least a node timeout ago; a call that finds a check in
// flight waits for it. It returns an error if two nodes share a server
// (permanent), or if fewer than a quorum could be verified. The check
// waits no longer than timeout and ctx allow, nor, once a quorum is
// verified, longer than twice as long as that took plus a tenth of timeout. Once every node is verified, it
// starts a check in the background once a minute.
func (c *Client) identify(ctx context.Context, timeout time.Duration) (permanent bool, err error) {
	id := &c.identity
	for {
		id.mu.Lock()
		if id.err != nil {
			defer id.mu.Unlock()
			return true, id.err
		}
		if wait := id.check; wait != nil {
			id.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return false, ErrNotAcquired // the caller says why
			}
		}
		now := time.Now()
		if id.pending == 0 {
			recheck := !now.Before(id.next)
			if recheck {
				id.next = now.Add(identityRecheck)
			}
			id.mu.Unlock()
			if recheck {
				c.recheck(timeout)
			}
			return false, nil
		}
		if now.Before(id.next) {
			defer id.mu.Unlock()
			return false, c.quorumError(nil)
		}
		done := make(chan struct{})
		id.check, id.next = done, now.Add(timeout)
		id.mu.Unlock()
		out := c.checkNodes(ctx, timeout)
		id.mu.Lock()
		id.check = nil
		close(done)
		switch {
		case ctx.Err() != nil:
			id.next = time.Time{} // cut short: the next caller checks again
		case id.pending == 0:
			id.next = time.Now().Add(identityRecheck)
		}
		if id.err != nil {
			defer id.mu.Unlock()
			return true, id.err
		}
		defer id.mu.Unlock()
		if err := c.quorumError(out); err != nil {
			return out.permanentFailures() > len(c.nodes)-quorum(len(c.nodes)), err
		}
		return false, nil
	}
}

// quorumError is the error of a Client with fewer than a quorum of nodes
// verified, naming why, or nil. out is the check just made, if any. The
// identity's mu is held.
func (c *Client) quorumError(out *outcome[none]) error {
	id, nodes := &c.identity, len(c.nodes)
	verified := nodes - id.pending
	if verified >= quorum(nodes) {
		return nil
	}
	if out != nil && out.round.ctxErr != nil {
		return ErrNotAcquired // the wait ended; the caller says why
	}
	var errs []error
	for i, n := range c.nodes {
		switch {
		case n.verified.Load():
		case id.why[i] != nil:
			errs = append(errs, n.errorf(id.why[i]))
		case out != nil:
			if err := out.round.nodeError(i, out.replies[i]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return fmt.Errorf("%w: %d of %d nodes shown to be servers of their own: %w", ErrNoQuorum, verified, nodes, errors.Join(errs...))
}

// checkNodes checks the unverified nodes, and waits as identify says.
func (c *Client) checkNodes(ctx context.Context, timeout time.Duration) *outcome[none] {
	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var grace *time.Timer
	defer func() {
		if grace != nil {
			grace.Stop()
		}
	}()
	r := launch(c, waitCtx, roundSpec[none]{call: c.identifyCall, timeout: timeout, unverified: true, skip: verifiedSkip(c.nodes)})
	heard := 0
	out := r.wait(waitCtx, func(_ int, _ reply[none], pendingHung int) bool {
		heard++
		if heard+pendingHung >= len(c.nodes) {
			return true
		}
		if grace == nil && c.verifiedCount() >= quorum(len(c.nodes)) {
			grace = time.AfterFunc(identityGraceFactor*time.Since(start)+timeout/10, cancel)
		}
		return false
	})
	if ctx.Err() == nil && out.round.ctxErr != nil {
		out.round.ctxErr = nil // the grace ended the wait, not the caller
	}
	return &out
}

// recheck checks every node again in the background, on the nodes' own
// goroutines, without waiting.
func (c *Client) recheck(timeout time.Duration) {
	for _, n := range c.nodes {
		n.spawn(timeout, func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			c.identifyCall(ctx, n, nil)
		})
	}
}

// verifiedSkip is the skip of a check: the nodes verified already, which
// need no second look.
func verifiedSkip(nodes []*node) []error {
	var skip []error
	for _, n := range nodes {
		if n.verified.Load() {
			if skip == nil {
				skip = make([]error, len(nodes))
			}
			skip[n.index] = errVerified
		}
	}
	return skip
}

// errVerified is the reply of a verified node a check does not call.
var errVerified = neverSent(errors.New("not checked: verified already"))

// verifiedCount counts the verified nodes.
func (c *Client) verifiedCount() int {
	c.identity.mu.Lock()
	defer c.identity.mu.Unlock()
	return len(c.nodes) - c.identity.pending
}

// identifyCall loads n's fingerprint on its server, asks which of the
// Client's fingerprints the server has, and records the answer, whenever it
// comes.
func (c *Client) identifyCall(ctx context.Context, n *node, _ liveness) reply[none] {
	id := &c.identity
	err := n.client.ScriptLoad(ctx, id.fingerprints[n.index]).Err()
	var found []bool
	if err == nil {
		found, err = n.client.ScriptExists(ctx, id.hashes...).Result()
	}
	if err == nil && len(found) != len(c.nodes) {
		err = fmt.Errorf("SCRIPT EXISTS returned %d values; want %d", len(found), len(c.nodes))
	}
	c.record(n, found, err)
	return reply[none]{ok: err == nil, err: err}
}

// record notes what node n's check found: err, or which fingerprints its
// server has. Two nodes found on one server are both unverified, so that
// no round counts them, and the Client fails for good.
func (c *Client) record(n *node, found []bool, err error) {
	id := &c.identity
	id.mu.Lock()
	defer id.mu.Unlock()
	if err != nil {
		if !n.verified.Load() {
			id.why[n.index] = err
		}
		return
	}
	twin := false
	for j, has := range found {
		if has && j != n.index {
			twin = true
			id.err = errors.Join(id.err, fmt.Errorf("redlock: nodes %d and %d reach the same server; each must be an independent master", min(j, n.index), max(j, n.index)))
			c.unverify(c.nodes[j])
		}
	}
	switch {
	case twin:
		c.unverify(n)
	case id.err == nil && !n.verified.Load():
		n.verified.Store(true)
		id.why[n.index] = nil
		id.pending--
	}
}

// unverify makes n unverified. The identity's mu is held.
func (c *Client) unverify(n *node) {
	if n.verified.Swap(false) {
		c.identity.pending++
	}
}

// refusal is the reply error of node i, which is not verified, for a round
// that does not call it.
func (id *identity) refusal(i int) error {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.err != nil {
		return neverSent(id.err)
	}
	if why := id.why[i]; why != nil {
		return neverSent(fmt.Errorf("%w: %w", errUnidentified, why))
	}
	return errUnidentified
}
