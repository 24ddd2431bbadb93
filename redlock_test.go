package redlock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// servers starts n embedded Redis servers and returns clients to them.
func servers(t *testing.T, n int) ([]*miniredis.Miniredis, []redis.UniversalClient) {
	t.Helper()
	var mrs []*miniredis.Miniredis
	var clients []redis.UniversalClient
	for range n {
		mr := miniredis.RunT(t)
		rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
		t.Cleanup(func() { rc.Close() })
		mrs = append(mrs, mr)
		clients = append(clients, rc)
	}
	return mrs, clients
}

func newClient(t *testing.T, clients []redis.UniversalClient, opts ...Option) *Client {
	t.Helper()
	c, err := New(clients, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

func TestSmoke(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	m := c.NewMutex("smoke")
	held, err := m.LockContext(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	keys := 0
	for _, mr := range mrs {
		if mr.Exists("redlock:{smoke}") {
			keys++
		}
	}
	if keys < 2 {
		t.Errorf("%d nodes have the key; want at least 2", keys)
	}
	other := c.NewMutex("smoke")
	if other.TryLock() {
		t.Fatal("TryLock of a held lock succeeded")
	}
	var wg sync.WaitGroup
	var got atomic.Bool
	wg.Go(func() {
		other.Lock()
		got.Store(true)
		other.Unlock()
	})
	time.Sleep(20 * time.Millisecond)
	if err := m.UnlockContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if !got.Load() {
		t.Fatal("waiter did not get the lock")
	}
	if held.Err() == nil {
		t.Fatal("held not cancelled")
	}
	if err := m.UnlockContext(context.Background()); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("second unlock = %v", err)
	}
}
