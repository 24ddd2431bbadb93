package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/seed62cefe0a/redlock"
)

// TestMaxHoldFreesTheLockOfAStuckHolder has a holder that never calls
// Unlock, on 3 real servers: held ends at the maximum hold, and a waiter in
// another Client gets the lock once the last confirmed validity has ended,
// and not before.
func TestMaxHoldFreesTheLockOfAStuckHolder(t *testing.T) {
	begin(t)
	const (
		ttl     = time.Second
		maxHold = 1500 * time.Millisecond
	)
	stuck := dial(t, 3, redlock.WithTTL(ttl), redlock.WithMaxHold(maxHold)).NewMutex("stuck")
	start := time.Now()
	held, err := stuck.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var lastUntil time.Time
	for held.Err() == nil && time.Since(start) < 10*time.Second {
		if until := stuck.Until(); !until.IsZero() {
			lastUntil = until
		}
		time.Sleep(time.Millisecond)
	}
	endedAt := time.Now()
	if cause := context.Cause(held); !errors.Is(cause, redlock.ErrLockLost) || !strings.Contains(cause.Error(), "1.5s") {
		t.Fatalf("Cause(held) = %v; want ErrLockLost naming the 1.5s limit", cause)
	}
	waiter := dial(t, 3, redlock.WithTTL(ttl)).NewMutex("stuck")
	if _, err := waiter.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	freeAt := time.Now()
	limit := start.Add(maxHold)
	t.Logf("held ended %v after the limit; the waiter got the lock %v after the limit, %v after the last confirmed validity ended (TTL %v)",
		endedAt.Sub(limit), freeAt.Sub(limit), freeAt.Sub(lastUntil), ttl)
	if endedAt.Before(limit) || endedAt.Sub(limit) > 200*time.Millisecond {
		t.Errorf("held ended %v after the limit; want soon after it", endedAt.Sub(limit))
	}
	if freeAt.Before(lastUntil) {
		t.Errorf("the waiter got the lock %v before the holder's last validity ended", lastUntil.Sub(freeAt))
	}
	if freeAt.Sub(limit) > ttl+time.Second {
		t.Errorf("the waiter got the lock %v after the limit; want within the TTL of %v and a retry", freeAt.Sub(limit), ttl)
	}
	waiter.Unlock()
	stuck.Unlock() // logs the loss; the key is gone already
}
