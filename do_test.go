package redlock

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDoRunsFnUnderTheLockAndReleases(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients).NewMutex("do")
	ran := false
	err := m.Do(t.Context(), func(held context.Context) error {
		ran = true
		if held.Err() != nil {
			t.Errorf("held.Err() inside fn = %v; want nil", held.Err())
		}
		if n := keysOn(mrs, m.key); n < 2 {
			t.Errorf("key on %d nodes inside fn; want a quorum", n)
		}
		return nil
	})
	if err != nil || !ran {
		t.Fatalf("Do = %v, ran = %v; want nil, true", err, ran)
	}
	settle(t, m.client.nodes) // a grant still in flight is released once it is answered
	if n := keysOn(mrs, m.key); n != 0 {
		t.Errorf("key on %d nodes after Do; want 0", n)
	}
	if !m.TryLock() {
		t.Fatal("TryLock after Do = false; want true: Do must unlock locally too")
	}
	m.Unlock()
}

func TestDoReturnsFnsError(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients).NewMutex("do")
	failed := errors.New("job failed")
	err := m.Do(t.Context(), func(context.Context) error { return failed })
	if !errors.Is(err, failed) || errors.Is(err, ErrLockLost) {
		t.Errorf("Do = %v; want the job's error, without ErrLockLost", err)
	}
	settle(t, m.client.nodes) // a grant still in flight is released once it is answered
	if n := keysOn(mrs, m.key); n != 0 {
		t.Errorf("key on %d nodes after Do; want 0", n)
	}
}

// TestDoReportsALossThoughFnSucceeded checks that Do returns an error
// wrapping ErrLockLost when the lock was lost during fn, whatever fn
// returned, joined with fn's error.
func TestDoReportsALossThoughFnSucceeded(t *testing.T) {
	failed := errors.New("job failed")
	for _, fnErr := range []error{nil, failed} {
		mrs, clients := servers(t, 3)
		m := newClient(t, clients, WithTTL(time.Second), WithWatchdogInterval(50*time.Millisecond)).NewMutex("do")
		err := m.Do(t.Context(), func(held context.Context) error {
			waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
			for _, mr := range mrs {
				mr.Del(m.key)
			}
			<-held.Done()
			return fnErr
		})
		if !errors.Is(err, ErrLockLost) {
			t.Errorf("Do with fn returning %v after a loss = %v; want ErrLockLost", fnErr, err)
		}
		if fnErr != nil && !errors.Is(err, fnErr) {
			t.Errorf("Do = %v; want fn's error joined with the loss", err)
		}
	}
}

// TestDoReportsALossFnDidNotSee checks the case of a holder whose process
// paused past the validity: fn returns nil before the expiry timer has
// fired, and Do must still see that the lock was not held throughout.
func TestDoReportsALossFnDidNotSee(t *testing.T) {
	_, clients := servers(t, 3)
	m := newClient(t, clients, WithTTL(300*time.Millisecond)).NewMutex("do")
	err := m.Do(t.Context(), func(held context.Context) error {
		stopExpiryTimer(m)
		m.client.watchdog.remove(m.current.Load())
		time.Sleep(400 * time.Millisecond) // a pause longer than the validity
		return nil
	})
	if !errors.Is(err, ErrLockLost) {
		t.Errorf("Do after fn outlived the validity = %v; want ErrLockLost", err)
	}
}

func TestDoReleasesAndPanicsAgainWhenFnPanics(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients).NewMutex("do")
	type boom struct{ n int }
	var got any
	func() {
		defer func() { got = recover() }()
		m.Do(t.Context(), func(context.Context) error { panic(boom{7}) })
	}()
	if got != (boom{7}) {
		t.Fatalf("recovered %v; want the panic value of fn, boom{7}", got)
	}
	settle(t, m.client.nodes) // a grant still in flight is released once it is answered
	if n := keysOn(mrs, m.key); n != 0 {
		t.Errorf("key on %d nodes after fn panicked; want 0", n)
	}
	if !m.TryLock() {
		t.Fatal("TryLock after a panic in Do = false; want true")
	}
	m.Unlock()
}

// TestDoReleasesWhenCtxEndsDuringFn checks that the release does not use the
// ctx that ended: the key is gone after Do, and the error is fn's, not a
// loss.
func TestDoReleasesWhenCtxEndsDuringFn(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients).NewMutex("do")
	ctx, cancel := context.WithCancel(t.Context())
	err := m.Do(ctx, func(held context.Context) error {
		cancel()
		<-held.Done()
		return context.Cause(held)
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrLockLost) {
		t.Errorf("Do = %v; want context.Canceled from fn, without ErrLockLost", err)
	}
	settle(t, m.client.nodes) // a grant still in flight is released once it is answered
	if n := keysOn(mrs, m.key); n != 0 {
		t.Errorf("key on %d nodes after Do whose ctx ended; want 0", n)
	}
}

func TestDoWhenTheLockIsTaken(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients)
	holder := c.NewMutex("do")
	holder.Lock()
	defer holder.Unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	ran := false
	err := c.NewMutex("do").Do(ctx, func(context.Context) error { ran = true; return nil })
	if ran || !errors.Is(err, ErrTaken) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Do of a held lock = %v, ran = %v; want ErrTaken and DeadlineExceeded, fn not run", err, ran)
	}
}

// TestDoReleasesItsOwnHolding checks that Do does not release an
// acquisition other than its own when fn misuses the Mutex: it unlocks it
// and locks it again.
func TestDoReleasesItsOwnHolding(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients).NewMutex("do")
	relock := make(chan struct{})
	err := m.Do(t.Context(), func(context.Context) error {
		m.Unlock()
		go func() { m.Lock(); close(relock) }()
		<-relock
		return nil
	})
	if !errors.Is(err, ErrNotHeld) {
		t.Errorf("Do whose fn unlocked the Mutex = %v; want ErrNotHeld", err)
	}
	if n := keysOn(mrs, m.key); n < 2 {
		t.Errorf("key on %d nodes: Do released the acquisition made inside fn", n)
	}
	m.Unlock()
}

func TestDoNilArgumentsPanic(t *testing.T) {
	_, clients := servers(t, 1)
	m := newClient(t, clients).NewMutex("do")
	if msg := panicMessage(func() { m.Do(t.Context(), nil) }); msg != "redlock: Do with a nil func" {
		t.Errorf("Do(ctx, nil) panicked with %q; want \"redlock: Do with a nil func\"", msg)
	}
	//lint:ignore SA1012 the nil context is the point
	if msg := panicMessage(func() { m.Do(nil, func(context.Context) error { return nil }) }); msg != "redlock: nil Context" {
		t.Errorf("Do(nil, fn) panicked with %q; want \"redlock: nil Context\"", msg)
	}
}

// TestDoReportsALossThoughFnUnlocked checks that a loss is reported when fn
// saw it and unlocked the Mutex itself.
func TestDoReportsALossThoughFnUnlocked(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients, WithTTL(time.Second), WithWatchdogInterval(50*time.Millisecond)).NewMutex("do")
	err := m.Do(t.Context(), func(held context.Context) error {
		waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
		for _, mr := range mrs {
			mr.Del(m.key)
		}
		<-held.Done()
		m.Unlock() // a lost lock is not misuse: Unlock logs and returns
		return nil
	})
	t.Logf("Do = %v", err)
	if !errors.Is(err, ErrLockLost) {
		t.Errorf("Do after a loss = %v; want ErrLockLost", err)
	}
}

// TestReleaseMissingAQuorumIsNotALoss checks that a release that hears one
// refusal of three, and does not wait for a node marked hung in an earlier
// round, does not report a loss: a quorum (nodes 0 and 2) held the key
// throughout.
func TestReleaseMissingAQuorumIsNotALoss(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 1)
	c := newClient(t, clients, WithTTL(10*time.Second), WithNodeTimeout(100*time.Millisecond))
	m := c.NewMutex("do")
	err := m.Do(t.Context(), func(held context.Context) error {
		waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
		mrs[1].Del(m.key) // node 1 restarted, say
		hooks[2].pause()
		other := c.NewMutex("other")
		if !other.TryLock() {
			t.Fatal("other TryLock failed")
		}
		waitFor(t, "node 2 marked hung", func() bool { return c.nodes[2].hung.Load() })
		hooks[2].resume()
		time.Sleep(50 * time.Millisecond)
		// Node 2 answers releases within a fifth of the node timeout.
		hooks[2].add(&fault{match: isKind("release"), before: 20 * time.Millisecond})
		t.Cleanup(other.Unlock)
		if held.Err() != nil || !mrs[0].Exists(m.key) || !mrs[2].Exists(m.key) {
			t.Fatal("setup: the lock should still be held on nodes 0 and 2")
		}
		return nil
	})
	t.Logf("Do = %v", err)
	if errors.Is(err, ErrLockLost) {
		t.Errorf("Do = %v; want no ErrLockLost: a quorum held the key until fn returned", err)
	}
}
