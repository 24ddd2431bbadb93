package redlock

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Addresses cannot prove two servers apart: "127.0.0.1:6379" and
// "localhost:6379" are one, so are two DB numbers of one server, a failover
// client tells no address at all, and a Cluster client reaches several
// servers. So a Client checks on the servers themselves that no two of its
// nodes reach the same one, and counts toward a quorum only the nodes it
// has shown to be servers of their own: the verified set. Every round that
// grants, keeps or reads a lease calls only the nodes of the verified set
// it read once, as it started; the rounds that only undo (a release, a
// waiter leaving the queue, the leftovers) call every node.
//
// Each node has a fingerprint, a script of its own, and a server has one
// script cache whatever the address or DB it is reached by. A check has two
// phases, with a barrier between them:
//
//  1. every node loads its fingerprint on its server (on each shard of a
//     Cluster or Ring client);
//  2. once the loads have answered (or a grace after a quorum of them, or
//     the node timeout, has passed), each node whose load answered asks its
//     server which of the Client's fingerprints it has.
//
// A node is shown to be a server of its own when its server has its own
// fingerprint (on every shard) and no other node's (on any shard). If it has
// another's, the two nodes share a server: the Client fails for good. If it
// lacks its own, the server lost its script cache during the check (a
// restart, or SCRIPT FLUSH): the node is not shown, and is checked again.
//
// Why two nodes of one server are never both shown by one check: say nodes
// i and j share server S, loaded at times Li and Lj, and asked at Ei and Ej,
// both after both loads (the barrier). Only a flush removes a fingerprint.
// If Li < Lj, for i to be shown S lacks j's fingerprint at Ei > Lj, so S
// was flushed between Lj and Ei; but S has i's at Ei, so it was not flushed
// between Li and Ei, which contains that span. Symmetrically if Lj < Li.
//
// Across checks: a check that shows only nodes already in the verified set
// leaves the set as it was, less the nodes it found unshown or twins; a
// check that shows a node outside the set replaces the set with exactly the
// nodes it has shown so far. So any two nodes of the set were shown by one
// check, and no two of them share a server, as long as an address keeps
// reaching the server it reached (a failover client that moves to a server
// that another node reaches is found by the next check).
//
// The first call starts the first check (New makes no call to a server).
// Later checks run when a call or the watchdog finds one due: at once
// after a check in a hurry (below) left a node out, at most once per node timeout while any node is not shown, and
// once a minute otherwise. A call waits for a check only while fewer than
// a quorum of nodes are verified, and no longer than the node timeout; the
// rest of the check goes on in the background.

const (
	// identityRecheck is how often the nodes are checked again once every
	// one is verified.
	identityRecheck = time.Minute
	// identityGraceFactor bounds how long the first phase of a check in a
	// hurry waits for the other nodes once a quorum has loaded: that many
	// times as long as the quorum took, plus a tenth of the node timeout. A
	// node that is slower is left to the next check, which is due at once
	// and waits for every node.
	identityGraceFactor = 2
)

// errUnidentified is the reply of a node a round does not call: it has not
// been shown yet to be a server of its own.
var errUnidentified = neverSent(errors.New("not sent: not yet shown to be a server of its own"))

// errNotLoaded is the reply of a node whose fingerprint did not load in the
// check's first phase: the second does not ask it.
var errNotLoaded = neverSent(errors.New("not checked: its fingerprint did not load in time"))

// errCheckUnanswered is why a node whose load did not answer in time is not
// verified.
var errCheckUnanswered = errors.New("did not answer the identity check in time")

// errFlushed is why a node whose server lacked its own fingerprint was not
// shown.
var errFlushed = errors.New("its server lost its script cache during the check (a restart?)")

// identity is what a Client knows of its nodes' servers.
type identity struct {
	fingerprints []string // node i's script
	hashes       []string // their SHA1s, in hex
	// set is the verified set: set[i] says node i is shown to be a server
	// of its own. It is replaced, never changed in place, so that a round
	// reads one set.
	set atomic.Pointer[[]bool]

	mu    sync.Mutex
	why   []error   // what node i's last check found, while it is not verified
	err   error     // two nodes reach one server: permanent
	check *check    // the check in flight, or nil
	next  time.Time // no check starts before then
}

// check is one check in flight.
type check struct {
	timeout time.Duration
	// hurry says that a call waits for the check with fewer than a quorum
	// of nodes verified: its first phase ends a grace after a quorum has
	// loaded. Otherwise the first phase waits for every node, up to the
	// timeout, so that a node slower than the others is verified too.
	hurry   bool
	quorate chan struct{} // closed once a quorum of nodes is verified
	done    chan struct{} // closed when the check has ended
}

// init readies the identity of a Client of the given id with nodes nodes,
// none verified.
func (id *identity) init(clientID string, nodes int) {
	id.why = make([]error, nodes)
	id.set.Store(new(make([]bool, nodes)))
	for i := range nodes {
		source := fmt.Sprintf("return 'redlock: fingerprint of node %d of client %s'", i, clientID)
		sum := sha1.Sum([]byte(source))
		id.fingerprints = append(id.fingerprints, source)
		id.hashes = append(id.hashes, hex.EncodeToString(sum[:]))
	}
}

// verified returns the verified set, which the caller must not change.
func (id *identity) verified() []bool { return *id.set.Load() }

// identify makes sure, before a call that needs a quorum, that a quorum of
// nodes is verified. It starts a check if one is due, and waits for a check
// in flight while fewer than a quorum are verified: until a quorum is, the
// check ends, ctx is done (then it returns ErrNotAcquired, and the caller
// says why) or timeout passes. It returns an error if two nodes share a
// server (permanent), or if fewer than a quorum are verified, naming why
// for each node that is not (permanent when more than the nodes a quorum
// can spare failed for good, as with an ACL that forbids SCRIPT).
func (c *Client) identify(ctx context.Context, timeout time.Duration) (permanent bool, err error) {
	id := &c.identity
	ck, quorate, err := c.dueCheck(timeout)
	if err != nil {
		return true, err
	}
	if quorate {
		return false, nil
	}
	if ck != nil && !c.waitCheck(ctx, ck, timeout) {
		return false, ErrNotAcquired
	}
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.err != nil {
		return true, id.err
	}
	return c.quorumError()
}

// waitCheck waits for the check ck to verify a quorum of nodes, for no
// longer than timeout; once a quorum is, it waits for the check to end for
// a grace as long as identityGraceFactor times the wait so far, plus a
// tenth of timeout, so that a node only a little slower than the others
// counts from the first acquisition. It returns false if ctx ended first.
func (c *Client) waitCheck(ctx context.Context, ck *check, timeout time.Duration) bool {
	start := time.Now()
	budget := time.NewTimer(timeout)
	defer budget.Stop()
	select {
	case <-ck.quorate:
	case <-ck.done:
		return true
	case <-budget.C:
		return true
	case <-ctx.Done():
		return false
	}
	grace := time.NewTimer(identityGraceFactor*time.Since(start) + timeout/10)
	defer grace.Stop()
	select {
	case <-ck.done:
	case <-grace.C:
	case <-budget.C:
	case <-ctx.Done():
		return false
	}
	return true
}

// dueCheck starts a check if one is due and the Client is not closing, and
// returns the check in flight, if any, and whether a quorum of nodes is
// verified, or the error of two nodes found on one server.
func (c *Client) dueCheck(timeout time.Duration) (*check, bool, error) {
	id := &c.identity
	c.mu.RLock() // before id.mu; Close waits for checks once it has said so under c.mu
	defer c.mu.RUnlock()
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.err != nil {
		return nil, false, id.err
	}
	quorate := count(id.verified()) >= quorum(len(c.nodes))
	if id.check == nil && !time.Now().Before(id.next) && !c.isClosing() {
		c.startCheck(timeout, !quorate)
	}
	return id.check, quorate, nil
}

// startCheck starts a check with the given node timeout on its own
// goroutine, which Close waits for. c.mu (read) and the identity's mu are
// held, and the Client is not closing.
func (c *Client) startCheck(timeout time.Duration, hurry bool) {
	ck := &check{timeout: timeout, hurry: hurry, quorate: make(chan struct{}), done: make(chan struct{})}
	c.identity.check = ck
	c.checks.Add(1)
	go c.runCheck(ck)
}

// quorumError is the error of a Client with fewer than a quorum of nodes
// verified, naming why, or nil; forGood says whether more nodes than a
// quorum can spare failed for good. The identity's mu is held.
func (c *Client) quorumError() (forGood bool, err error) {
	id, nodes := &c.identity, len(c.nodes)
	set := id.verified()
	verified := count(set)
	if verified >= quorum(nodes) {
		return false, nil
	}
	var errs []error
	failedForGood := 0
	for i, n := range c.nodes {
		if !set[i] && id.why[i] != nil {
			errs = append(errs, n.errorf(id.why[i]))
			if permanent(id.why[i]) {
				failedForGood++
			}
		}
	}
	err = fmt.Errorf("%w: %d of %d nodes shown to be servers of their own", ErrNoQuorum, verified, nodes)
	if errs == nil {
		return false, fmt.Errorf("%w; the check is still waiting for the others", err)
	}
	return failedForGood > nodes-quorum(nodes), fmt.Errorf("%w: %w", err, errors.Join(errs...))
}

// runCheck runs the check ck, in its two phases, and records what it
// found. It ends early once the Client is closing.
func (c *Client) runCheck(ck *check) {
	defer c.checks.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	loaded, cut := c.loadPhase(ctx, ck)
	v := &verdicts{old: slices.Clone(c.identity.verified()), shown: make([]bool, len(c.nodes))}
	c.askPhase(ctx, ck, loaded, v)
	id := &c.identity
	id.mu.Lock()
	defer id.mu.Unlock()
	id.check = nil
	close(ck.done)
	switch {
	case count(id.verified()) == len(c.nodes):
		id.next = time.Now().Add(identityRecheck)
	case cut:
		id.next = time.Time{} // the grace cut nodes off: check them without one
	default:
		id.next = time.Now().Add(ck.timeout)
	}
}

// loadPhase has every node load its fingerprint, and returns which nodes'
// loads answered before it ended: once every node has answered (in a
// hurry, every node not hung), or, in a hurry, a grace after a quorum has
// loaded, or the timeout. cut says that the grace ended it with some node
// not heard from.
func (c *Client) loadPhase(ctx context.Context, ck *check) (loaded []bool, cut bool) {
	timeout := ck.timeout
	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var grace *time.Timer
	defer func() {
		if grace != nil {
			grace.Stop()
		}
	}()
	nodes := len(c.nodes)
	answered := make([]bool, nodes)
	loaded = make([]bool, nodes)
	heard, oks := 0, 0
	r := launch(c, waitCtx, roundSpec[none]{call: c.loadCall, timeout: timeout, anyNode: true, waitAll: true})
	r.wait(waitCtx, func(i int, rep reply[none], pendingHung int) bool {
		heard++
		answered[i] = true
		if rep.ok {
			loaded[i] = true
			oks++
		} else {
			c.identity.note(i, rep.err)
		}
		if !ck.hurry {
			return heard == nodes
		}
		if heard+pendingHung >= nodes {
			return true
		}
		if grace == nil && oks >= quorum(nodes) {
			grace = time.AfterFunc(identityGraceFactor*time.Since(start)+timeout/10, cancel)
		}
		return false
	})
	for i, ok := range answered {
		if !ok {
			c.identity.note(i, errCheckUnanswered)
		}
	}
	cut = waitCtx.Err() != nil && ctx.Err() == nil && heard < nodes
	return slices.Clone(loaded), cut // replies may still come; the barrier is now
}

// askPhase asks the nodes that loaded their fingerprints which fingerprints
// their servers have, and records each answer as it comes.
func (c *Client) askPhase(ctx context.Context, ck *check, loaded []bool, v *verdicts) {
	skip := make([]error, len(c.nodes))
	for i, ok := range loaded {
		if !ok {
			skip[i] = errNotLoaded
		}
	}
	asked := count(loaded)
	if asked == 0 {
		return
	}
	r := launch(c, ctx, roundSpec[[]bool]{call: c.askCall, timeout: ck.timeout, anyNode: true, waitAll: true, skip: skip})
	heard := 0
	r.wait(ctx, func(i int, rep reply[[]bool], _ int) bool {
		if loaded[i] {
			heard++
			c.record(ck, v, i, rep)
		}
		return heard == asked
	})
}

// verdicts is what one check has found so far.
type verdicts struct {
	old   []bool // the verified set when the check began
	shown []bool // the nodes the check has shown to be servers of their own
	fresh bool   // some node outside old is shown: the set is now shown
}

// record notes node i's answer to a check's second phase, and publishes
// the verified set it makes: see the comment at the top of this file.
func (c *Client) record(ck *check, v *verdicts, i int, rep reply[[]bool]) {
	id := &c.identity
	id.mu.Lock()
	defer id.mu.Unlock()
	set := slices.Clone(id.verified())
	switch {
	case rep.err != nil:
		id.why[i] = rep.err
	case !rep.ok: // rep.value lacks i's own fingerprint
		id.why[i] = errFlushed
		set[i] = false
	case id.err != nil:
		// Two nodes share a server: the Client has failed for good, and
		// no node is added to the set any more.
	default:
		twin := false
		for j, has := range rep.value {
			if has && j != i {
				twin = true
				id.err = errors.Join(id.err, fmt.Errorf("redlock: nodes %d and %d reach the same server; each must be an independent master", min(i, j), max(i, j)))
				set[j] = false
				v.old[j] = false
			}
		}
		if twin {
			set[i] = false
			break
		}
		id.why[i] = nil
		v.shown[i] = true
		if !v.old[i] && !v.fresh {
			v.fresh = true
		}
		if v.fresh {
			set = slices.Clone(v.shown)
		} else {
			set[i] = true
		}
	}
	id.set.Store(&set)
	if count(set) >= quorum(len(c.nodes)) {
		select {
		case <-ck.quorate:
		default:
			close(ck.quorate)
		}
	}
}

// note records why node i's load failed, for a node not verified.
func (id *identity) note(i int, err error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if !id.verified()[i] {
		id.why[i] = err
	}
}

// loadCall loads n's fingerprint on its server, on every shard.
func (c *Client) loadCall(ctx context.Context, n *node, _ liveness) reply[none] {
	source := c.identity.fingerprints[n.index]
	err := eachShard(ctx, n.client, func(ctx context.Context, rc redis.Cmdable) error {
		return rc.ScriptLoad(ctx, source).Err()
	})
	return reply[none]{ok: err == nil, err: err}
}

// askCall asks n's server which of the Client's fingerprints it has. Its
// value has, for every other node, whether any shard has that node's
// fingerprint, and for n, whether every shard has its own; ok says the
// latter.
func (c *Client) askCall(ctx context.Context, n *node, _ liveness) reply[[]bool] {
	id := &c.identity
	var mu sync.Mutex
	has := make([]bool, len(c.nodes))
	own, shards := true, 0
	err := eachShard(ctx, n.client, func(ctx context.Context, rc redis.Cmdable) error {
		found, err := rc.ScriptExists(ctx, id.hashes...).Result()
		if err == nil && len(found) != len(id.hashes) {
			err = fmt.Errorf("SCRIPT EXISTS returned %d values; want %d", len(found), len(id.hashes))
		}
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		shards++
		own = own && found[n.index]
		for j, f := range found {
			has[j] = has[j] || f
		}
		return nil
	})
	if err != nil {
		return reply[[]bool]{err: err}
	}
	has[n.index] = own && shards > 0
	return reply[[]bool]{ok: has[n.index], value: has}
}

// shardedClient is a client over several servers, each with a script cache of
// its own: a Cluster or Ring client.
type shardedClient interface {
	ForEachShard(ctx context.Context, fn func(ctx context.Context, client *redis.Client) error) error
}

// eachShard runs fn on every shard of rc, or on rc itself if it has none.
func eachShard(ctx context.Context, rc redis.UniversalClient, fn func(context.Context, redis.Cmdable) error) error {
	s, ok := rc.(shardedClient)
	if !ok {
		return fn(ctx, rc)
	}
	return s.ForEachShard(ctx, func(ctx context.Context, shard *redis.Client) error { return fn(ctx, shard) })
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

// count counts the true values.
func count(bits []bool) int {
	n := 0
	for _, b := range bits {
		if b {
			n++
		}
	}
	return n
}
