//go:build reviewsem

// Review tests for the semaphore2 branch. They are skipped by default (the
// build tag keeps them out): run them with
//
//	go test -race -count=1 -tags reviewsem -run 'TestReviewSem' .
package redlock

import (
	"context"
	"errors"
	"testing"
	"time"
)

// DESIGN.md, Close: "It waits for lock calls in progress, which end with
// ErrClosed"; the brief: Close ends waiters with ErrClosed. A waiter queued
// on a Semaphore whose permits are held must end with ErrClosed, promptly,
// and the holder's permit ends with ErrLockLost.
func TestReviewSemCloseEndsWaiter(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	s := c.NewSemaphore("closing", 1)
	p, err := s.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := s.Acquire(context.Background())
		errc <- err
	}()
	waitFor(t, "the waiter to queue", func() bool {
		list, _ := mrs[0].List(s.keys.queueKeys[0].(string))
		return len(list) == 1
	})
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("waiting Acquire at Close = %v; want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiting Acquire still waiting 5s after Close")
	}
	if err := <-closed; err != nil {
		t.Errorf("Close = %v", err)
	}
	if cause := context.Cause(p.Context()); !errors.Is(cause, ErrLockLost) || !errors.Is(cause, ErrClosed) {
		t.Errorf("held permit's cause after Close = %v; want ErrLockLost and ErrClosed", cause)
	}
	if err := p.Release(context.Background()); !errors.Is(err, ErrLockLost) && !errors.Is(err, ErrClosed) {
		t.Errorf("Release after Close = %v; want ErrLockLost or ErrClosed", err)
	}
	for i, mr := range mrs {
		if n := slotsHeldOn(mr, s); n != 0 {
			t.Errorf("node %d holds %d slots after Close", i, n)
		}
		if list, _ := mr.List(s.keys.queueKeys[0].(string)); len(list) != 0 {
			t.Errorf("node %d still queues %v after Close", i, list)
		}
	}
}

// The brief: "a waiter whose ctx ends leaves no queue entry". A waiter of a
// Semaphore whose permits are all held, and whose ctx ends, is taken out of
// the queue on every node.
func TestReviewSemWaiterThatGivesUpLeavesTheQueue(t *testing.T) {
	mrs, clients := servers(t, 3)
	s := newClient(t, clients).NewSemaphore("giveup", 2)
	var permits []*Permit
	for range 2 {
		p, err := s.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		permits = append(permits, p)
	}
	defer func() {
		for _, p := range permits {
			p.Release(context.Background())
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := s.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire = %v; want the wait to end", err)
	}
	waitFor(t, "the queue to empty on every node", func() bool {
		for _, mr := range mrs {
			if list, _ := mr.List(s.keys.queueKeys[0].(string)); len(list) != 0 {
				return false
			}
		}
		return true
	})
	st, err := s.Status(t.Context())
	if err != nil || st.Held != 2 || st.Waiters != 0 {
		t.Errorf("Status = %+v, %v; want 2 held, 0 waiters", st, err)
	}
}
