package redlock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// DefaultURL is the node Dial connects to when given no URLs.
const DefaultURL = "redis://127.0.0.1:6379/0"

// Client makes mutexes over a fixed set of independent Redis masters. Make
// one per set of masters and share it: it is safe for concurrent use, and
// every Mutex it makes shares its connections. The zero value is not usable;
// call New or Dial.
type Client struct {
	nodes []*node
	cfg   config
	owned []redis.UniversalClient // made by Dial; closed by Close

	mu      sync.RWMutex // guards closed against new calls during Close
	closed  bool
	closing chan struct{} // closed by Close: watchdogs and waiters stop

	watchdog   *watchdog
	batchLimit int // locks one extension call may carry; see batchLimit
	watchdogs  sync.WaitGroup
	notifier   *notifier
}

// New returns a Client over the given masters, one client per independent
// Redis master (a *redis.Client, *redis.ClusterClient or failover client).
// The options are the defaults of every Mutex the Client makes. New reports
// an error naming the problem if there are no clients, a nil client, the same
// client or address twice (which would let one server count twice toward a
// quorum), or an invalid option. The Client does not close the given clients.
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
		if rc == nil {
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
		nodes = append(nodes, newNode(i, strings.Join(addrs, ","), rc, closing))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c := &Client{nodes: nodes, cfg: cfg, closing: closing}
	c.notifier = newNotifier(c)
	c.watchdog = newWatchdog(c)
	c.batchLimit = batchLimit(nodes)
	return c, nil
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

// Dial connects to the masters at the given URLs (redis://, rediss:// or
// unix://, as redis.ParseURL reads them) and returns a Client that owns those
// connections: Close closes them. With no URLs it connects to DefaultURL,
// redis://127.0.0.1:6379/0. Dial does not contact the servers; the first lock
// call does. Per-call deadlines are enabled on the connections it makes, so
// calls to a hung server end with the node timeout, and go-redis does not
// retry a call (unless the URL sets max_retries), since lock rounds retry.
// Nor does go-redis probe a pooled connection with an extra system call
// before each command: a connection the server has closed (it restarted,
// say) fails its first command with EOF, and redlock sends that command once
// more, on a new connection.
func Dial(urls []string, opts ...Option) (*Client, error) {
	if len(urls) == 0 {
		urls = []string{DefaultURL}
	}
	clients := make([]redis.UniversalClient, 0, len(urls))
	closeAll := func() {
		for _, rc := range clients {
			rc.Close()
		}
	}
	for i, url := range urls {
		options, err := redis.ParseURL(url)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("redlock: URL %d (%q): %w", i, url, err)
		}
		options.ContextTimeoutEnabled = true
		// One try per call unless the URL says otherwise: lock rounds have
		// their own timeout and retries, and go-redis's default retries
		// (five dials 100ms apart, three commands with backoff) would keep a
		// round waiting on a server that is down.
		if options.DialerRetries == 0 {
			options.DialerRetries = 1
		}
		if options.MaxRetries == 0 {
			options.MaxRetries = -1
		}
		options.Dialer = unprobed(redis.NewDialer(options))
		clients = append(clients, redis.NewClient(options))
	}
	c, err := New(clients, opts...)
	if err != nil {
		closeAll()
		return nil, err
	}
	c.owned = clients
	return c, nil
}

// Close stops the Client. Locks still held are no longer extended: their
// held contexts end with a cause wrapping ErrLockLost and ErrClosed, and
// their keys expire on the servers after the TTL. Close waits for every
// background call and goroutine of the Client to finish (a call to a hung
// server ends with the node timeout on clients from Dial, and with the read
// timeout on clients given to New), then closes the clients that Dial made. Calls after Close fail
// with ErrClosed. Close is safe to call more than once; later calls return nil.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closing)
	c.mu.Unlock()

	c.watchdogs.Wait()
	c.notifier.wait()
	for _, n := range c.nodes {
		n.calls.Wait()
	}
	var errs []error
	for _, rc := range c.owned {
		errs = append(errs, rc.Close())
	}
	return errors.Join(errs...)
}

// isClosed reports whether Close has begun.
func (c *Client) isClosed() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.closed
}

// unprobed wraps dial so that the connections it makes hide their file
// descriptor. go-redis checks that a pooled connection is alive before every
// command with a non-blocking read, which costs a system call and five
// allocations per command, but only on connections that expose one. A dead
// connection still shows itself on the next command, with EOF, and the node
// calls send that command again (see node.process).
func unprobed(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return opaqueConn{conn}, nil
	}
}

// opaqueConn is a net.Conn with nothing more: it does not implement
// syscall.Conn.
type opaqueConn struct{ net.Conn }
