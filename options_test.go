package redlock

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

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

func TestDefaults(t *testing.T) {
	cfg := defaultConfig()
	if err := cfg.validate(); err != nil {
		t.Fatalf("default configuration invalid: %v", err)
	}
	tests := []struct {
		name      string
		got, want time.Duration
	}{
		{"TTL", cfg.ttl, 8 * time.Second},
		{"drift", cfg.drift(), 82 * time.Millisecond},
		{"node timeout", cfg.perNodeTimeout(), 500 * time.Millisecond},
		{"watchdog interval", cfg.extendInterval(), 8 * time.Second / 3},
		{"retry delay", cfg.retryDelay, 50 * time.Millisecond},
		{"retry jitter", cfg.retryJitter, 50 * time.Millisecond},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("default %s = %v; want %v", tt.name, tt.got, tt.want)
		}
	}
	short := defaultConfig()
	short.apply([]Option{WithTTL(300 * time.Millisecond)})
	if got, want := short.perNodeTimeout(), 30*time.Millisecond; got != want {
		t.Errorf("node timeout for a 300ms TTL = %v; want %v", got, want)
	}
	if got, want := short.drift(), 5*time.Millisecond; got != want {
		t.Errorf("drift for a 300ms TTL = %v; want %v", got, want)
	}
}

func TestMutexOptionsOverrideClient(t *testing.T) {
	_, clients := servers(t, 1)
	c := newClient(t, clients, WithTTL(time.Second), WithKeyPrefix("app:"))
	m := c.NewMutex("job", WithTTL(2*time.Second))
	if m.cfg.ttl != 2*time.Second {
		t.Errorf("mutex TTL = %v; want 2s", m.cfg.ttl)
	}
	if m.key != "app:{job}" {
		t.Errorf("mutex key = %q; want %q", m.key, "app:{job}")
	}
	if c.cfg.ttl != time.Second {
		t.Errorf("client TTL = %v after NewMutex; want 1s", c.cfg.ttl)
	}
}

func TestNewMutexBadConfigurationIsReported(t *testing.T) {
	_, clients := servers(t, 1)
	c := newClient(t, clients)
	tests := []struct {
		name string
		m    *Mutex
		want string
	}{
		{"empty name", c.NewMutex(""), "mutex name is empty"},
		{"bad TTL", c.NewMutex("x", WithTTL(-time.Second)), "TTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.m.LockContext(t.Context()); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LockContext error = %v; want it to contain %q", err, tt.want)
			}
			if _, err := tt.m.TryLockContext(t.Context()); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("TryLockContext error = %v; want it to contain %q", err, tt.want)
			}
			if tt.m.TryLock() {
				t.Error("TryLock = true; want false")
			}
			msg := panicMessage(tt.m.Lock)
			if !strings.Contains(msg, tt.want) {
				t.Errorf("Lock panic = %q; want it to contain %q", msg, tt.want)
			}
		})
	}
}

func TestDial(t *testing.T) {
	c, err := Dial(nil)
	if err != nil {
		t.Fatalf("Dial(nil): %v", err)
	}
	if len(c.nodes) != 1 || c.nodes[0].addr != "127.0.0.1:6379" {
		t.Errorf("Dial(nil) nodes = %d, first at %q; want 1 at 127.0.0.1:6379", len(c.nodes), c.nodes[0].addr)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}

	if _, err := Dial([]string{"redis://127.0.0.1:1/0", "http://nope"}); err == nil || !strings.Contains(err.Error(), "URL 1") {
		t.Errorf("Dial with a bad URL error = %v; want it to name URL 1", err)
	}
	if _, err := Dial([]string{"redis://127.0.0.1:1/0", "redis://127.0.0.1:1/2"}); err == nil || !strings.Contains(err.Error(), "both use address") {
		t.Errorf("Dial with one server twice error = %v; want a duplicate-address error", err)
	}
}

func TestDialedClientSurvivesServerRestarts(t *testing.T) {
	mrs, _ := servers(t, 3)
	var urls []string
	for _, mr := range mrs {
		urls = append(urls, "redis://"+mr.Addr()+"/0")
	}
	c, err := Dial(urls)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Fill the pools with several connections to each server: locks taken
	// at the same time use one each.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			m := c.NewMutex(fmt.Sprintf("fill-%d", i))
			m.Lock()
			m.Unlock()
		})
	}
	wg.Wait()
	settle(t, c.nodes)
	m := c.NewMutex("restarts")
	for _, mr := range mrs {
		mr.Close()
		if err := mr.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	// Every pooled connection is dead; a command on one fails with EOF and
	// is sent again, until it finds a new connection.
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatalf("TryLockContext after every server restarted = %v; want the lock", err)
	}
	m.Unlock()
}

// panicMessage runs f and returns what it panicked with, or "".
func panicMessage(f func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	f()
	return ""
}
