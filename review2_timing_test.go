//go:build review2

// Failing reproductions from the second review of the identity check,
// kept for the fix: go test -tags review2 -run TestReview .

package redlock

import (
	"context"
	"testing"
	"time"
)

// TryLockContext is "one attempt ... bounded by ctx and the node timeout".
// On a fresh Client, with one node slow (200ms per command) and one hung,
// the identity check takes up to one node timeout, then the acquisition
// round another.
func TestReviewTryLockTakesTwoNodeTimeouts(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	timeout := 500 * time.Millisecond
	c := newFreshClient(t, clients, WithLogger(discard()), WithNodeTimeout(timeout))
	hooks[1].add(&fault{after: 200 * time.Millisecond})
	hooks[2].pause()
	defer hooks[2].resume()
	m := c.NewMutex("slow")
	start := time.Now()
	_, err := m.TryLockContext(t.Context())
	took := time.Since(start)
	if err == nil {
		m.Unlock()
	}
	t.Logf("TryLockContext = %v after %v (node timeout %v)", err, took, timeout)
	if took > timeout+timeout/5 {
		t.Fatalf("one attempt took %v, more than the node timeout %v", took, timeout)
	}
}

// A node that answers every command within the node timeout (300ms of
// 500ms) but not two in a row is never verified, so it never counts: with
// another node down, LockContext never gets a free lock.
func TestReviewSlowNodeNeverVerified(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	c := newFreshClient(t, clients, WithLogger(discard()), WithNodeTimeout(500*time.Millisecond))
	hooks[1].add(&fault{after: 300 * time.Millisecond})
	hooks[2].pause()
	defer hooks[2].resume()
	m := c.NewMutex("slow")
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
	defer cancel()
	_, err := m.LockContext(ctx)
	if err == nil {
		m.Unlock()
		return
	}
	t.Fatalf("LockContext on a free lock, node 0 fast, node 1 answering each command in 300ms (node timeout 500ms), node 2 hung: %v", err)
}
