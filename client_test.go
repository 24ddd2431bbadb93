package redlock

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestCloseEndsHeldLocks(t *testing.T) {
	_, clients := servers(t, 3)
	c, err := New(clients)
	if err != nil {
		t.Fatal(err)
	}
	m := c.NewMutex("closing")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if cause := context.Cause(held); !errors.Is(cause, ErrLockLost) || !errors.Is(cause, ErrClosed) {
		t.Errorf("Cause(held) after Close = %v; want ErrLockLost and ErrClosed", cause)
	}
	if err := m.UnlockContext(t.Context()); !errors.Is(err, ErrLockLost) {
		t.Errorf("UnlockContext after Close = %v; want ErrLockLost", err)
	}
	if _, err := m.LockContext(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("LockContext after Close = %v; want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
}

func TestCloseStopsWaiters(t *testing.T) {
	_, clients := servers(t, 1)
	holder := newClient(t, clients).NewMutex("w")
	holder.Lock()
	defer holder.Unlock()
	c, err := New(clients)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.NewMutex("w").LockContext(context.Background())
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("LockContext ended by Close = %v; want ErrClosed", err)
	}
}

func TestNewRejectsBadConfiguration(t *testing.T) {
	_, clients := servers(t, 2)
	sameAddr := redis.NewClient(&redis.Options{Addr: clients[0].(*redis.Client).Options().Addr, DB: 1})
	t.Cleanup(func() { sameAddr.Close() })
	tests := []struct {
		name    string
		clients []redis.UniversalClient
		opts    []Option
		want    string
	}{
		{"no clients", nil, nil, "no Redis clients"},
		{"nil client", []redis.UniversalClient{clients[0], nil}, nil, "client 1 is nil"},
		{"same client twice", []redis.UniversalClient{clients[0], clients[1], clients[0]}, nil, "clients 0 and 2 are the same client"},
		{"same address twice", []redis.UniversalClient{clients[0], sameAddr}, nil, "clients 0 and 1 both use address"},
		{"zero TTL", clients, []Option{WithTTL(0)}, "TTL 0s must be a positive"},
		{"sub-millisecond TTL", clients, []Option{WithTTL(1500 * time.Microsecond)}, "whole number of milliseconds"},
		{"TTL leaves no validity", clients, []Option{WithTTL(3 * time.Millisecond)}, "too small"},
		{"node timeout eats the TTL", clients, []Option{WithTTL(time.Second), WithNodeTimeout(time.Second)}, "too small"},
		{"negative drift", clients, []Option{WithDriftFactor(-0.1)}, "drift factor"},
		{"drift too large", clients, []Option{WithDriftFactor(0.5)}, "drift factor"},
		{"zero node timeout", clients, []Option{WithNodeTimeout(0)}, "node timeout"},
		{"zero watchdog interval", clients, []Option{WithWatchdogInterval(0)}, "watchdog interval 0s must be positive"},
		{"watchdog interval too long", clients, []Option{WithTTL(time.Second), WithWatchdogInterval(600 * time.Millisecond)}, "exceeds half the TTL"},
		{"zero retry delay", clients, []Option{WithRetryDelay(0)}, "retry delay"},
		{"negative jitter", clients, []Option{WithRetryJitter(-1)}, "retry jitter"},
		{"negative wait timeout", clients, []Option{WithWaitTimeout(-time.Second)}, "wait timeout"},
		{"nil logger", clients, []Option{WithLogger(nil)}, "logger"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.clients, tt.opts...)
			if err == nil {
				c.Close()
				t.Fatalf("New succeeded; want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "redlock: ") {
				t.Fatalf("New error = %q; want it to start with \"redlock: \" and contain %q", err, tt.want)
			}
		})
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := New([]redis.UniversalClient{nil}, WithTTL(-1), WithRetryDelay(0))
	if err == nil {
		t.Fatal("New succeeded; want an error")
	}
	for _, want := range []string{"client 0 is nil", "TTL", "retry delay"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New error = %q; want it to contain %q", err, want)
		}
	}
}

// Two failover clients (or any clients whose address New cannot
// see) of one server are caught before they count twice.
func TestClientsOfOneServerAreCaughtAtFirstUse(t *testing.T) {
	mrs, clients := servers(t, 2)
	same := redis.NewClient(&redis.Options{Addr: mrs[0].Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { same.Close() })
	// Wrapped, the clients hide their address, as a failover client does.
	c := newClient(t, []redis.UniversalClient{opaque{clients[0]}, clients[1], opaque{same}})
	for range 2 { // found at first use, and kept
		_, err := c.NewMutex("twice").TryLockContext(t.Context())
		if err == nil || !strings.Contains(err.Error(), "same server") {
			t.Errorf("TryLockContext over one server reached twice = %v; want an error naming the same server", err)
		}
	}
}

// opaque hides the type of a client.
type opaque struct{ redis.UniversalClient }
