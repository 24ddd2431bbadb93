package redlock

import (
	"context"
	"fmt"
	"net"

	"github.com/redis/go-redis/v9"
)

// DefaultURL is the node Dial connects to when given no URLs.
const DefaultURL = "redis://127.0.0.1:6379/0"

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

// unprobed wraps dial so that the connections it makes hide their file
// descriptor. go-redis checks that a pooled connection is alive before every
// command with a non-blocking read, which costs a system call and five
// allocations per command, but only on connections that expose one. A dead
// connection still shows itself on the next command, with EOF, and send
// sends that command again.
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
