package redlock

import (
	"strings"
	"testing"
	"time"
)

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
		{"negative maximum hold", c.NewMutex("x", WithMaxHold(-time.Second)), "maximum hold -1s must not be negative"},
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
