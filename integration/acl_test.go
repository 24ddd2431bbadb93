package integration

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

// An ACL user without channel permissions (Redis 7 users get resetchannels
// by default) can lock and unlock: a release deletes the key even though it
// cannot publish the wake-up, and waiters, which cannot subscribe, poll at
// their retry delay instead of waiting for a wake-up that cannot come. The
// Client says so once.
func TestACLUserWithoutChannelPermissions(t *testing.T) {
	begin(t)
	const nodes = 3
	admins := suite.clients(t, nodes)
	urls := userWithoutChannels(t, admins)
	logs := &warnings{}
	opts := []redlock.Option{redlock.WithRetryDelay(20 * time.Millisecond), redlock.WithRetryJitter(0),
		redlock.WithNodeTimeout(400 * time.Millisecond), redlock.WithLogger(slog.New(logs))}
	dialACL := func() *redlock.Client {
		c, err := redlock.Dial(urls, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	holder := dialACL().NewMutex("acl")
	waiter := dialACL().NewMutex("acl")
	holder.Lock()
	acquired := make(chan time.Time, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := waiter.LockContext(ctx); err != nil {
			t.Errorf("waiter: %v", err)
			close(acquired)
			return
		}
		acquired <- time.Now()
	}()
	waitUntil(t, "the waiter to queue", func() bool {
		n, _ := admins[0].LLen(t.Context(), "redlock:{acl}:waiters").Result()
		return n == 1
	})
	released := time.Now()
	if err := holder.UnlockContext(t.Context()); err != nil {
		t.Errorf("UnlockContext with a waiter queued = %v; want nil: the key is deleted even if the wake-up cannot be published", err)
	}
	at, ok := <-acquired
	if !ok {
		t.FailNow()
	}
	// Polling at the 20ms retry delay, not the 400ms node timeout per wait.
	if waited := at.Sub(released); waited > 300*time.Millisecond {
		t.Errorf("waiter acquired %v after the release; want a few retry delays (20ms)", waited)
	} else {
		t.Logf("waiter acquired %v after the release", waited)
	}
	waiter.Unlock()
	// Unlock returns at a quorum; the last node's release may still be in
	// flight, and lands within the node timeout.
	deadline := time.Now().Add(2 * 400 * time.Millisecond)
	for i, rc := range admins {
		for {
			n, _ := rc.Exists(t.Context(), "redlock:{acl}").Result()
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("server %d still has the lock key twice the node timeout after Unlock", i)
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if got := logs.count("wake-ups"); got != 2 {
		t.Errorf("%d warnings about wake-ups; want 2, once per Client:\n%s", got, logs.text())
	}
}

// userWithoutChannels makes a user that may run every command on every key
// but use no channel, and returns URLs that log in as it.
func userWithoutChannels(t *testing.T, admins []*redis.Client) []string {
	var urls []string
	for i, rc := range admins {
		if err := rc.Do(t.Context(), "ACL", "SETUSER", "locker", "reset", "on", ">secret", "~*", "resetchannels", "+@all").Err(); err != nil {
			t.Fatalf("ACL SETUSER on server %d: %v", i, err)
		}
		t.Cleanup(func() { rc.Do(context.Background(), "ACL", "DELUSER", "locker") })
		urls = append(urls, fmt.Sprintf("redis://locker:secret@%s/0", suite.servers[i].addr()))
	}
	return urls
}

// warnings is a slog handler that keeps the messages of warnings.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) Enabled(_ context.Context, level slog.Level) bool { return level >= slog.LevelWarn }
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler               { return w }
func (w *warnings) WithGroup(string) slog.Handler                    { return w }
func (w *warnings) Handle(_ context.Context, rec slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, rec.Message)
	return nil
}

func (w *warnings) count(substr string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, msg := range w.list {
		if strings.Contains(msg, substr) {
			n++
		}
	}
	return n
}

func (w *warnings) text() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.list, "\n")
}

// waitUntil polls cond for up to 10s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
