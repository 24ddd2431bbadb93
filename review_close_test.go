//go:build review

package redlock

import (
	"bytes"
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// slowSubConn delays what a connection reads by delay, once it has sent a
// SUBSCRIBE: the pubsub connection's messages arrive late (a retransmit, a
// busy link), while the command connections are not slowed.
type slowSubConn struct {
	net.Conn
	delay    time.Duration
	sub      atomic.Bool
	start    sync.Once
	chunks   chan slowChunk
	pending  []byte
	mu       sync.Mutex
	deadline time.Time
}

type slowChunk struct {
	data []byte
	at   time.Time
	err  error
}

func (c *slowSubConn) Write(p []byte) (int, error) {
	if bytes.Contains(bytes.ToLower(p), []byte("subscribe")) {
		c.sub.Store(true)
	}
	return c.Conn.Write(p)
}

func (c *slowSubConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *slowSubConn) SetReadDeadline(t time.Time) error {
	if !c.sub.Load() {
		return c.Conn.SetReadDeadline(t)
	}
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

func (c *slowSubConn) Read(p []byte) (int, error) {
	if !c.sub.Load() {
		return c.Conn.Read(p)
	}
	c.start.Do(func() {
		c.Conn.SetReadDeadline(time.Time{})
		c.chunks = make(chan slowChunk, 1024)
		go func() {
			for {
				buf := make([]byte, 4096)
				n, err := c.Conn.Read(buf)
				c.chunks <- slowChunk{data: buf[:n], at: time.Now(), err: err}
				if err != nil {
					return
				}
			}
		}()
	})
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	c.mu.Lock()
	deadline := c.deadline
	c.mu.Unlock()
	var expired <-chan time.Time
	if !deadline.IsZero() {
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case ch := <-c.chunks:
		time.Sleep(time.Until(ch.at.Add(c.delay)))
		n := copy(p, ch.data)
		c.pending = ch.data[n:]
		return n, ch.err
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	}
}

// slowSubClients returns clients of mrs whose subscriptions hear messages
// delay late.
func slowSubClients(t *testing.T, mrs []*miniredis.Miniredis, delay time.Duration) []redis.UniversalClient {
	var own []redis.UniversalClient
	for _, mr := range mrs {
		rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1,
			Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				conn, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &slowSubConn{Conn: conn, delay: delay}, nil
			}})
		t.Cleanup(func() { rc.Close() })
		own = append(own, rc)
	}
	return own
}

// A waiter that gives up just after a release popped and woke it, while
// the wake-up message is still on its way over the pubsub connection,
// leaves (its LREM finds nothing: the release took it out), unregisters and
// drops the wake-up when it lands. Nobody passes it on: the waiter behind
// it waits for its poll with the lock free.
func TestReviewWakeUpInFlightAtCloseIsLost(t *testing.T) {
	for kind, newLock := range queuedKinds {
		t.Run(kind, func(t *testing.T) {
			mrs, clients := servers(t, 3)
			holder := newLock(t, clients, "inflight")
			release, err := holder.acquire(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			opts := []Option{WithRetryDelay(2 * time.Second), WithRetryJitter(0), WithNodeTimeout(2 * time.Second)}
			w1 := newLock(t, slowSubClients(t, mrs, time.Second), "inflight", opts...)
			w2 := newLock(t, clients, "inflight", opts...)
			ctx1, cancel1 := context.WithCancel(t.Context())
			defer cancel1()
			gave := async(func() error {
				rel, err := w1.acquire(ctx1)
				if err == nil {
					rel()
				}
				return err
			})
			waitFor(t, "w1 to queue", func() bool { return onAll(mrs, w1) })
			ctx2, cancel2 := context.WithCancel(t.Context())
			defer cancel2()
			var release2 func()
			got2 := async(func() (err error) { release2, err = w2.acquire(ctx2); return err })
			waitFor(t, "w2 to queue", func() bool { return onAll(mrs, w2) })
			settle(t, holder.listener.nodes)

			start := time.Now()
			release()                        // pops w1 and publishes its wake-up, 1s on its way
			settle(t, holder.listener.nodes) // the release ran on every node
			cancel1()                        // w1 gives up before the message lands
			if err := <-gave; err == nil {
				t.Fatal("w1 acquired")
			}
			select {
			case err := <-got2:
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("w2 acquired %v after the release; w1 hears=%v", time.Since(start), w1.listener.notifier != nil)
				release2()
			case <-time.After(3 * time.Second):
				l, _ := mrs[0].List(w2.queue)
				t.Errorf("w2 not woken within 3s of a release, with the lock free (w2 polls every 20s; queue on node 0: %v)", l)
				cancel2()
				<-got2
			}
		})
	}
}

// onAll reports whether a waiter of l is queued on every server.
func onAll(mrs []*miniredis.Miniredis, l queuedLock) bool {
	for _, mr := range mrs {
		if !queuedOn(mr, l.queue, l.listener) {
			return false
		}
	}
	return true
}
