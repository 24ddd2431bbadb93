package redlock

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Client makes mutexes over a fixed set of independent Redis masters. Make
// one per set of masters and share it: it is safe for concurrent use, and
// every Mutex it makes shares its connections. The zero value is not usable;
// call New or Dial.
//
// Locks are taken in this order, never the other way: a lease's mu, then
// the watchdog's mu (a lease joins the watchdog under its own lock); the
// Client's mu (read), then the notifier's mu, the identity's mu (a round
// asks why a node is not verified) or a node's leftovers' mu. A round's mu
// and the eventOrder's mu are taken alone.
// Observer funcs are called with none of them held.
type Client struct {
	nodes []*node
	cfg   config
	owned []redis.UniversalClient // made by Dial; closed by Close

	mu sync.RWMutex // orders Close against the calls that start work
	// closing is closed when Close begins: no new lock call starts, and
	// waits end.
	closing chan struct{}
	// callsStopped says that the nodes take no more calls: every call in
	// flight has finished. Guarded by mu.
	callsStopped bool
	closed       chan struct{}  // closed when Close has finished
	active       sync.WaitGroup // lock calls in progress, which Close waits for
	// leases counts the leases not yet released: held, or lost or
	// unlocked with their final release still to finish. Only a lock call
	// adds to it, so once Close has waited for those, it can wait for it.
	leases sync.WaitGroup
	checks sync.WaitGroup // identity checks in flight

	watchdog   *watchdog
	batchLimit int  // locks one extension call may carry; see batchLimit
	sharded    bool // some node is a Redis Cluster or Ring: keys hash to slots
	retries    bool // some node's client sends commands again by itself
	notifier   *notifier
	identity   identity

	unheardLogged atomic.Bool // wake-ups were found to be denied, and logged
}

// New returns a Client over the given masters, one client per independent
// Redis master (a *redis.Client, *redis.ClusterClient or failover client).
// The options are the defaults of every Mutex the Client makes. New reports
// an error naming the problem if there are no clients, a nil client, the same
// client or address twice (which would let one server count twice toward a
// quorum), or an invalid option. Since one server can have several
// addresses (a name and an IP, two DB numbers, a failover client that tells
// none), the first lock call also checks on the servers, through their
// script caches, that no two nodes reach the same server, and fails for
// good if two do; a node not shown yet to be a server of its own counts
// toward no quorum, and every node is checked again while one is not
// shown, and once a minute otherwise (see identity.go). The Client does not
// close the given clients. Clients with ContextTimeoutEnabled and
// MaxRetries -1 serve best: see the README.
func New(clients []redis.UniversalClient, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	cfg.apply(opts)
	errs := []error{cfg.validate()}
	if len(clients) == 0 {
		errs = append(errs, errors.New("redlock: no Redis clients given"))
	}
	seenClient := make(map[redis.UniversalClient]int)
	seenAddr := make(map[string]int)
	nodes := make([]*node, 0, len(clients))
	closing := make(chan struct{})
	for i, rc := range clients {
		if isNil(rc) {
			errs = append(errs, fmt.Errorf("redlock: client %d is nil", i))
			continue
		}
		if j, dup := seenClient[rc]; dup {
			errs = append(errs, fmt.Errorf("redlock: clients %d and %d are the same client; each must be an independent master", j, i))
			continue
		}
		seenClient[rc] = i
		addrs := clientAddrs(rc)
		for _, addr := range addrs {
			if j, dup := seenAddr[addr]; dup {
				errs = append(errs, fmt.Errorf("redlock: clients %d and %d both use address %s; each must be an independent master", j, i, addr))
			}
			seenAddr[addr] = i
		}
		n := newNode(i, strings.Join(addrs, ","), rc, closing)
		n.observer, n.logger = cfg.observer, cfg.logger
		nodes = append(nodes, n)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c := &Client{nodes: nodes, cfg: cfg, closing: closing, closed: make(chan struct{})}
	c.notifier = newNotifier(c)
	c.watchdog = newWatchdog(c)
	c.batchLimit = batchLimit(nodes)
	c.sharded = sharded(nodes)
	for _, n := range nodes {
		c.retries = c.retries || n.retries
	}
	c.identity.init(c.notifier.id, len(nodes))
	return c, nil
}

// isNil reports whether rc is nil, or a nil pointer inside the interface.
func isNil(rc redis.UniversalClient) bool {
	if rc == nil {
		return true
	}
	v := reflect.ValueOf(rc)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// clientAddrs returns the server addresses a client talks to, where its type
// tells them.
func clientAddrs(rc redis.UniversalClient) []string {
	switch rc := rc.(type) {
	case *redis.Client:
		// A failover client reports this placeholder, not a server.
		if addr := rc.Options().Addr; addr != "FailoverClient" {
			return []string{addr}
		}
	case *redis.ClusterClient:
		return rc.Options().Addrs
	case *redis.Ring:
		var addrs []string
		for _, addr := range rc.Options().Addrs {
			addrs = append(addrs, addr)
		}
		return addrs
	}
	return nil
}

// Close stops the Client. It waits for lock calls in progress, which end
// with ErrClosed; locks still held are released, and their held contexts end
// with a cause wrapping ErrLockLost and ErrClosed. Close waits for every
// background call and goroutine of the Client to finish (a call to a hung
// server ends with the node timeout on clients from Dial, and with the read
// timeout on clients given to New), then closes the clients that Dial made.
// Calls after Close fail with ErrClosed. Close is safe to call more than
// once: later calls wait for the first to finish and return nil.
func (c *Client) Close() error {
	// 1. Say that Close has begun, under mu, so that no lock call starts
	// after this and every wait ends: once enterCall has said no, active
	// only goes down.
	c.mu.Lock()
	if c.isClosing() {
		c.mu.Unlock()
		<-c.closed
		return nil
	}
	close(c.closing)
	c.mu.Unlock()
	defer close(c.closed)

	// 2. Wait for the lock calls in progress, which end with ErrClosed or
	// with a lease held: after this no lease is made.
	c.active.Wait()
	c.checks.Wait() // the identity checks, which end at once
	// 3. Stop the watchdog, waiting for its rounds, so that no extension
	// or repair overtakes a release; it loses the leases still held,
	// which starts their final releases.
	c.watchdog.shutdown()
	// 4. Wait for every lease's final release: before the nodes close, so
	// that each is sent.
	c.leases.Wait()
	// 5. End the wake-up subscriptions: no waiter is left to wake.
	c.notifier.shutdown()
	// 6. Stop the nodes' calls, and wait for those in flight (each bounded
	// by its timeout), so that the sweep runs after every command of ours
	// that could still land.
	c.mu.Lock()
	c.callsStopped = true
	c.mu.Unlock()
	for _, n := range c.nodes {
		n.calls.Wait()
	}
	// 7. A last try for the holds that may be left, now that nothing else
	// is in flight.
	var sweeps sync.WaitGroup
	for _, n := range c.nodes {
		sweeps.Go(func() { n.sweep(c.cfg.perNodeTimeout()) })
	}
	sweeps.Wait()
	// 8. Close the clients that Dial made, last: the sweep used them.
	var errs []error
	for _, rc := range c.owned {
		errs = append(errs, rc.Close())
	}
	return errors.Join(errs...)
}

// enterCall records a lock call in progress, unless Close has begun; the
// caller calls exitCall when it is done.
func (c *Client) enterCall() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.isClosing() {
		return false
	}
	c.active.Add(1)
	return true
}

func (c *Client) exitCall() { c.active.Done() }

// isClosing reports whether Close has begun.
func (c *Client) isClosing() bool {
	select {
	case <-c.closing:
		return true
	default:
		return false
	}
}

// scriptsRunEverywhere reports whether a script has run on every node.
func (c *Client) scriptsRunEverywhere() bool {
	for _, n := range c.nodes {
		if !n.scriptsRun.Load() {
			return false
		}
	}
	return true
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

// wakeUnheard logs, once per Client, that a node refused to pass on a
// wake-up: waiters then poll at their retry delay.
func (c *Client) wakeUnheard(n *node, command string) {
	if c.unheardLogged.Swap(true) {
		return
	}
	c.cfg.logger.Warn("redlock: a node refuses wake-ups, so waiters poll for the lock instead; an ACL user needs permission on the channels "+wakeChannelPrefix+"*",
		"node", n.index, "addr", n.addr, "command", command)
}

// sharded reports whether some node spreads keys over servers by their hash
// slot: a Redis Cluster or a Ring.
func sharded(nodes []*node) bool {
	for _, n := range nodes {
		switch n.client.(type) {
		case *redis.ClusterClient, *redis.Ring:
			return true
		}
	}
	return false
}
