package redlock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// tickClocks moves the servers' clocks, which miniredis moves only when
// told, with real time, until the test ends: keys then expire.
func tickClocks(t *testing.T, mrs []*miniredis.Miniredis) {
	t.Helper()
	done := make(chan struct{})
	var ticking sync.WaitGroup
	ticking.Go(func() {
		const step = 10 * time.Millisecond
		ticker := time.NewTicker(step)
		defer ticker.Stop()
		for {
			select {
			case <-done:
				return
			case <-ticker.C:
				for _, mr := range mrs {
					mr.FastForward(step)
				}
			}
		}
	})
	t.Cleanup(func() {
		close(done)
		ticking.Wait()
	})
}

// slotsHeldOn counts the slots of s that a server holds.
func slotsHeldOn(mr *miniredis.Miniredis, s *Semaphore) int {
	held := 0
	for _, key := range s.keys.slots {
		if mr.Exists(key) {
			held++
		}
	}
	return held
}

// slotsFreed waits until no server holds a slot of s: a grant whose answer
// came late is released once its node answers again.
func slotsFreed(t *testing.T, mrs []*miniredis.Miniredis, s *Semaphore, when string) {
	t.Helper()
	waitFor(t, "every slot to be free "+when, func() bool {
		for _, mr := range mrs {
			if slotsHeldOn(mr, s) != 0 {
				return false
			}
		}
		return true
	})
}

func TestSemaphoreRejectsBadConfiguration(t *testing.T) {
	_, clients := servers(t, 1)
	c := newClient(t, clients)
	for _, tt := range []struct {
		name    string
		sem     string
		permits int
		opts    []Option
		want    string
	}{
		{"no permits", "s", 0, nil, "0 permits is outside [1, 1024]"},
		{"negative permits", "s", -1, nil, "-1 permits is outside [1, 1024]"},
		{"too many permits", "s", MaxPermits + 1, nil, "1025 permits is outside [1, 1024]"},
		{"empty name", "", 1, nil, "semaphore name is empty"},
		{"brace in name", "a{b", 1, nil, "has a brace"},
		{"fencing", "s", 1, []Option{WithFencing()}, "WithFencing does not apply to a Semaphore"},
		{"exact key", "s", 1, []Option{WithExactKey()}, "WithExactKey does not apply to a Semaphore"},
		{"bad option", "s", 1, []Option{WithTTL(-time.Second)}, "TTL -1s must be a positive"},
		{"brace in prefix", "s", 1, []Option{WithKeyPrefix("a{")}, "key prefix \"a{\" has a brace"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := c.NewSemaphore(tt.sem, tt.permits, tt.opts...)
			if s.Permits() != tt.permits || s.Name() != tt.sem {
				t.Errorf("Permits(), Name() = %d, %q; want %d, %q", s.Permits(), s.Name(), tt.permits, tt.sem)
			}
			calls := map[string]func() error{
				"Acquire":    func() error { _, err := s.Acquire(t.Context()); return err },
				"TryAcquire": func() error { _, err := s.TryAcquire(t.Context()); return err },
				"Status":     func() error { _, err := s.Status(t.Context()); return err },
				"Do":         func() error { return s.Do(t.Context(), func(context.Context) error { return nil }) },
			}
			for call, f := range calls {
				if err := f(); err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s() = %v; want an error containing %q", call, err, tt.want)
				}
			}
		})
	}
	// The bounds themselves are valid, and a Client's default of fencing
	// is not the Semaphore's to refuse.
	fencingClient := newClient(t, clients, WithFencing())
	for _, permits := range []int{1, MaxPermits} {
		s := fencingClient.NewSemaphore(fmt.Sprint("bounds-", permits), permits)
		p, err := s.TryAcquire(t.Context())
		if err != nil {
			t.Fatalf("TryAcquire with %d permits = %v; want a permit", permits, err)
		}
		if err := p.Release(t.Context()); err != nil {
			t.Errorf("Release = %v", err)
		}
	}
}

// holders counts the permits whose contexts are live at once.
type holders struct{ inside, most, sections atomic.Int32 }

// hold counts a permit in for a short section, and out again. The section
// lasts until permits holders are inside, or 50ms, and a little longer, so
// that the bound is reached whenever the Semaphore allows it, and passed
// whenever it would.
func (h *holders) hold(t *testing.T, p *Permit, permits int32) {
	if err := p.Context().Err(); err != nil {
		t.Errorf("permit's Context ended before its section: %v", context.Cause(p.Context()))
	}
	n := h.inside.Add(1)
	for {
		most := h.most.Load()
		if n <= most || h.most.CompareAndSwap(most, n) {
			break
		}
	}
	for deadline := time.Now().Add(50 * time.Millisecond); h.inside.Load() < permits && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	// A holder too many, had one been let in, would be inside by now.
	time.Sleep(5 * time.Millisecond)
	if err := p.Context().Err(); err != nil {
		t.Errorf("permit's Context ended in its section: %v", context.Cause(p.Context()))
	}
	h.inside.Add(-1)
	h.sections.Add(1)
}

func TestSemaphoreHasAtMostPermitsHolders(t *testing.T) {
	for _, tt := range []struct {
		name          string
		servers, down int
	}{
		{"3 masters", 3, 0},
		{"3 masters, 1 down", 3, 1},
		{"5 masters, 2 down", 5, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const permits, clientCount, perClient, cycles = 3, 3, 3, 4
			mrs, clients := servers(t, tt.servers)
			for _, mr := range mrs[:tt.down] {
				mr.Close()
			}
			// A Semaphore that leaked slots would stall the workers: fail
			// instead.
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			var h holders
			var workers sync.WaitGroup
			for range clientCount {
				c := newClient(t, clients, WithRetryDelay(5*time.Millisecond), WithRetryJitter(5*time.Millisecond))
				s := c.NewSemaphore("bounded", permits)
				for range perClient {
					workers.Go(func() {
						for range cycles {
							p, err := s.Acquire(ctx)
							if err != nil {
								t.Errorf("Acquire = %v", err)
								return
							}
							h.hold(t, p, permits)
							if err := p.Release(t.Context()); err != nil {
								t.Errorf("Release = %v", err)
							}
						}
					})
				}
			}
			workers.Wait()
			if got := h.most.Load(); got > permits {
				t.Errorf("%d permits were held at once; want at most %d", got, permits)
			} else if got < permits {
				t.Errorf("at most %d permits were held at once; want %d reached by %d workers", got, permits, clientCount*perClient)
			}
			if got, want := h.sections.Load(), int32(clientCount*perClient*cycles); got != want {
				t.Errorf("%d sections ran; want %d", got, want)
			}
		})
	}
}

func TestSemaphoreTryAcquire(t *testing.T) {
	_, clients := servers(t, 3)
	s := newClient(t, clients).NewSemaphore("try", 4)
	var permits []*Permit
	for range 3 {
		p, err := s.TryAcquire(t.Context())
		if err != nil {
			t.Fatalf("TryAcquire with permits free = %v", err)
		}
		permits = append(permits, p)
	}
	// One slot is free: whichever slot an attempt draws first, the
	// refusals lead it to the free one.
	for i := range 20 {
		p, err := s.TryAcquire(t.Context())
		if err != nil {
			t.Fatalf("TryAcquire %d with one permit free = %v", i, err)
		}
		if i == 19 {
			permits = append(permits, p)
			break
		}
		if err := p.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	_, err := s.TryAcquire(t.Context())
	if !errors.Is(err, ErrTaken) || !errors.Is(err, ErrNotAcquired) {
		t.Errorf("TryAcquire with every permit held = %v; want ErrTaken", err)
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("TryAcquire with every permit held took %v; want one attempt", elapsed)
	}
	// A release that returned at a quorum may still be on its way to the
	// third server, and a grant refused there meanwhile is repaired later:
	// a quorum holds each slot.
	if st, err := s.Status(t.Context()); err != nil || st.Held != 4 {
		t.Errorf("Status() with every permit held = %+v, %v; want Held 4", st, err)
	}
	for _, p := range permits {
		if err := p.Release(t.Context()); err != nil {
			t.Error(err)
		}
	}
}

func TestPermitReleasedTwice(t *testing.T) {
	mrs, clients := servers(t, 3)
	s := newClient(t, clients).NewSemaphore("twice", 2)
	p, err := s.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if until := p.Until(); !until.After(time.Now()) {
		t.Errorf("Until() = %v while held; want a time to come", until)
	}
	if err := p.Release(t.Context()); err != nil {
		t.Fatalf("Release = %v", err)
	}
	if err := p.Release(t.Context()); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second Release = %v; want ErrNotHeld", err)
	}
	if until := p.Until(); !until.IsZero() {
		t.Errorf("Until() = %v after Release; want zero", until)
	}
	if p.Context().Err() == nil {
		t.Error("permit's Context still live after Release")
	}
	slotsFreed(t, mrs, s, "after Release")
}

func TestLostPermit(t *testing.T) {
	for _, tt := range []struct {
		name string
		lose func(mrs []*miniredis.Miniredis, s *Semaphore)
	}{
		{"slots deleted", func(mrs []*miniredis.Miniredis, s *Semaphore) {
			for _, mr := range mrs {
				for _, key := range s.keys.slots {
					mr.Del(key)
				}
			}
		}},
		{"a majority down", func(mrs []*miniredis.Miniredis, _ *Semaphore) {
			mrs[0].Close()
			mrs[1].Close()
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mrs, clients := servers(t, 3)
			s := newClient(t, clients, WithTTL(time.Second)).NewSemaphore("lost", 2)
			p, err := s.Acquire(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			until := p.Until()
			tt.lose(mrs, s)
			select {
			case <-p.Context().Done():
			case <-time.After(3 * time.Second):
				t.Fatal("permit's Context still live 3s after its loss, with a 1s TTL")
			}
			if ended := time.Now(); !ended.Before(until) {
				t.Errorf("permit's Context ended at %v; want before its validity ended at %v", ended, until)
			}
			if cause := context.Cause(p.Context()); !errors.Is(cause, ErrLockLost) {
				t.Errorf("Cause(Context()) = %v; want ErrLockLost", cause)
			}
			if got := p.Until(); !got.IsZero() {
				t.Errorf("Until() = %v once lost; want zero", got)
			}
			if err := p.Release(t.Context()); !errors.Is(err, ErrLockLost) {
				t.Errorf("Release of a lost permit = %v; want ErrLockLost", err)
			}
		})
	}
}

func TestCrashedHoldersPermitFreesWithinATTL(t *testing.T) {
	mrs, clients := servers(t, 3)
	tickClocks(t, mrs)
	const ttl = time.Second
	// The holder has clients of its own, which its crash closes: its
	// extensions and its releases fail from then on.
	var own []redis.UniversalClient
	for _, mr := range mrs {
		own = append(own, redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1}))
	}
	crashing := newClient(t, own, WithTTL(ttl))
	p, err := crashing.NewSemaphore("crash", 1).Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	other := newClient(t, clients, WithTTL(ttl), WithRetryDelay(10*time.Millisecond), WithRetryJitter(0)).NewSemaphore("crash", 1)
	got := make(chan error, 1)
	var acquired time.Time
	go func() {
		q, err := other.Acquire(t.Context())
		acquired = time.Now()
		if err == nil {
			err = q.Release(t.Context())
		}
		got <- err
	}()
	waitFor(t, "the waiter to queue", func() bool {
		list, _ := mrs[0].List(other.keys.queueKeys[0].(string))
		return len(list) == 1
	})
	crashed := time.Now()
	for _, rc := range own {
		rc.Close()
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("Acquire after the holder crashed = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the crashed holder's permit was not free within 5s; the TTL is 1s")
	}
	// The slot expires one TTL after the last extension, before the crash;
	// the waiter polls every 100ms behind it.
	if took := acquired.Sub(crashed); took > ttl+300*time.Millisecond {
		t.Errorf("the permit was acquired %v after the crash; want within the TTL %v", took, ttl)
	}
	<-p.Context().Done()
}

func TestSemaphorePermitsMismatch(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients)
	p, err := c.NewSemaphore("limit", 2).Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(t.Context())
	other := newClient(t, clients, WithRetryDelay(time.Millisecond)).NewSemaphore("limit", 3)
	for _, tt := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Acquire", func(ctx context.Context) error { _, err := other.Acquire(ctx); return err }},
		{"Acquire again", func(ctx context.Context) error { _, err := other.Acquire(ctx); return err }},
		{"TryAcquire", func(ctx context.Context) error { _, err := other.TryAcquire(ctx); return err }},
		{"Status", func(ctx context.Context) error { _, err := other.Status(ctx); return err }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			start := time.Now()
			err := tt.call(ctx)
			if !errors.Is(err, ErrPermitsMismatch) || !errors.Is(err, ErrNotAcquired) {
				t.Fatalf("%s = %v; want ErrPermitsMismatch", tt.name, err)
			}
			if msg := err.Error(); !strings.Contains(msg, "has 3 permits") || !strings.Contains(msg, "a limit of 2") {
				t.Errorf("%s = %q; want both numbers named", tt.name, msg)
			}
			if elapsed := time.Since(start); elapsed > time.Second {
				t.Errorf("%s took %v; a mismatch is permanent and returned at once", tt.name, elapsed)
			}
		})
	}
}

func TestSemaphoreWaitEnds(t *testing.T) {
	_, clients := servers(t, 3)
	s := newClient(t, clients).NewSemaphore("full", 1)
	p, err := s.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(t.Context())
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Millisecond)
	defer cancel()
	_, err = s.Acquire(ctx)
	for _, want := range []error{ErrNotAcquired, context.DeadlineExceeded, ErrTaken} {
		if !errors.Is(err, want) {
			t.Errorf("Acquire with every permit held until ctx ended = %v; want it to wrap %v", err, want)
		}
	}
	_, err = s.Acquire(ctx)
	if !errors.Is(err, ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Acquire with ctx ended = %v; want ErrNotAcquired and ctx.Err()", err)
	}
}

func TestSemaphoreWakesWaitersInOrder(t *testing.T) {
	mrs, clients := servers(t, 3)
	// Polling alone would take 10s: only wake-ups by name are fast.
	opts := []Option{WithRetryDelay(time.Second), WithRetryJitter(0)}
	holder := newClient(t, clients, opts...).NewSemaphore("fifo", 2)
	var held []*Permit
	for range 2 {
		p, err := holder.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	type acquired struct {
		name string
		p    *Permit
	}
	order := make(chan acquired, 2)
	for i, name := range []string{"first", "second"} {
		s := newClient(t, clients, opts...).NewSemaphore("fifo", 2)
		go func() {
			p, err := s.Acquire(t.Context())
			if err != nil {
				t.Errorf("%s: Acquire = %v", name, err)
			}
			order <- acquired{name, p}
		}()
		waitFor(t, name+" to queue", func() bool {
			list, _ := mrs[0].List(holder.keys.queueKeys[0].(string))
			return len(list) == i+1
		})
	}
	for i, want := range []string{"first", "second"} {
		released := time.Now()
		if err := held[i].Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-order:
			if got.name != want {
				t.Fatalf("%s acquired the permit; want %s, which queued first", got.name, want)
			}
			// A queued waiter polls every 10s: only the release's
			// wake-up is this fast.
			if took := time.Since(released); took > 2*time.Second {
				t.Errorf("%s acquired %v after the release; want it woken by the release", want, took)
			}
			defer got.p.Release(t.Context())
		case <-time.After(5 * time.Second):
			t.Fatalf("%s not woken within 5s of the release; polling would take 10s", want)
		}
	}
}

// A waiter of a process that died, first in the queue, does not take the
// wake-up of a release: the live waiter behind it gets the permit.
func TestSemaphoreDeadWaiterDoesNotAbsorbAWakeUp(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithRetryDelay(10 * time.Second), WithRetryJitter(0)}
	holder := newClient(t, clients, opts...).NewSemaphore("dead", 1)
	p, err := holder.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every server to grant", func() bool {
		for _, mr := range mrs {
			if slotsHeldOn(mr, holder) != 1 {
				return false
			}
		}
		return true
	})
	waiter := newClient(t, clients, opts...).NewSemaphore("dead", 1)
	got := make(chan error, 1)
	go func() {
		q, err := waiter.Acquire(t.Context())
		if err == nil {
			err = q.Release(t.Context())
		}
		got <- err
	}()
	queue := holder.keys.queueKeys[0].(string)
	waitFor(t, "the waiter to queue", func() bool { list, _ := mrs[0].List(queue); return len(list) == 1 })
	for _, mr := range mrs {
		mr.Lpush(queue, "deadclient.deadwaiter")
	}
	if err := p.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("Acquire = %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the waiter was not woken within 3s of the release; the dead waiter took its wake-up")
	}
}

func TestSemaphoreStatus(t *testing.T) {
	mrs, clients := servers(t, 3)
	s := newClient(t, clients, WithRetryDelay(time.Second)).NewSemaphore("status", 3)
	if got, err := s.Status(t.Context()); err != nil || got != (SemaphoreStatus{Permits: 3}) {
		t.Errorf("Status() of an unused Semaphore = %+v, %v; want %+v", got, err, SemaphoreStatus{Permits: 3})
	}
	var held []*Permit
	for range 3 {
		p, err := s.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	ctx, cancel := context.WithCancel(t.Context())
	waiting := make(chan struct{})
	go func() {
		defer close(waiting)
		if p, err := s.Acquire(ctx); err == nil {
			p.Release(t.Context())
		}
	}()
	waitFor(t, "the waiter to queue", func() bool { list, _ := mrs[0].List(s.keys.queueKeys[0].(string)); return len(list) == 1 })
	if err := held[0].Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-waiting
	settle(t, s.client.nodes)
	want := SemaphoreStatus{Permits: 3, Held: 2, Waiters: 0}
	if got, err := s.Status(t.Context()); err != nil || got != want {
		t.Errorf("Status() = %+v, %v; want %+v", got, err, want)
	}
	// A slot held on a minority of servers is not held.
	mrs[0].Set(s.keys.slots[0], "other")
	mrs[0].Set(s.keys.slots[1], "other")
	mrs[0].Set(s.keys.slots[2], "other")
	if got, err := s.Status(t.Context()); err != nil || got.Held != 2 {
		t.Errorf("Status() with slots set on one server = %+v, %v; want Held 2", got, err)
	}
	mrs[2].Close()
	mrs[1].Close()
	if _, err := s.Status(t.Context()); err == nil {
		t.Error("Status() with 2 of 3 servers down = nil error; want the node errors")
	}
	for _, p := range held[1:] {
		p.Release(t.Context())
	}
}

func TestSemaphoreStatusCountsWaiters(t *testing.T) {
	mrs, clients := servers(t, 3)
	s := newClient(t, clients, WithRetryDelay(time.Second)).NewSemaphore("waiters", 1)
	p, err := s.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var waiting sync.WaitGroup
	for range 2 {
		waiting.Go(func() {
			if q, err := s.Acquire(ctx); err == nil {
				q.Release(t.Context())
			}
		})
	}
	waitFor(t, "two waiters to queue", func() bool { list, _ := mrs[0].List(s.keys.queueKeys[0].(string)); return len(list) == 2 })
	want := SemaphoreStatus{Permits: 1, Held: 1, Waiters: 2}
	if got, err := s.Status(t.Context()); err != nil || got != want {
		t.Errorf("Status() = %+v, %v; want %+v", got, err, want)
	}
	cancel()
	waiting.Wait()
	p.Release(t.Context())
}

func TestSemaphoreDo(t *testing.T) {
	mrs, clients := servers(t, 3)
	s := newClient(t, clients, WithTTL(time.Second)).NewSemaphore("do", 2)
	fnErr := errors.New("fn failed")
	err := s.Do(t.Context(), func(held context.Context) error {
		if held.Err() != nil {
			t.Errorf("held ended inside Do: %v", context.Cause(held))
		}
		return fnErr
	})
	if !errors.Is(err, fnErr) {
		t.Errorf("Do = %v; want fn's error", err)
	}
	slotsFreed(t, mrs, s, "after Do")
	msg := panicMessage(func() {
		s.Do(t.Context(), func(context.Context) error { panic("boom") })
	})
	if msg != "boom" {
		t.Errorf("Do's panic = %q; want fn's, boom", msg)
	}
	slotsFreed(t, mrs, s, "after a panic in Do")
	err = s.Do(t.Context(), func(held context.Context) error {
		for _, mr := range mrs {
			for _, key := range s.keys.slots {
				mr.Del(key)
			}
		}
		<-held.Done()
		return nil
	})
	if !errors.Is(err, ErrLockLost) {
		t.Errorf("Do with the permit lost = %v; want ErrLockLost", err)
	}
}

// The split of grants that makes a per-master counter inexact (DESIGN.md):
// with 3 masters and 2 permits, holders that each reach a different pair
// of masters would each win a quorum of counters. With a slot per permit,
// the third finds no slot free on a quorum.
func TestSemaphoreIsExactUnderSplitGrants(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 1)
	down := errors.New("down for this holder")
	var permits []*Permit
	for holder := range 3 {
		// Master holder does not answer this holder's Client.
		f := &fault{fail: down}
		hooks[holder].add(f)
		s := newClient(t, clients).NewSemaphore("split", 2)
		p, err := s.TryAcquire(t.Context())
		hooks[holder].remove(f)
		switch {
		case holder < 2 && err != nil:
			t.Fatalf("holder %d: TryAcquire = %v; want a permit", holder, err)
		case holder == 2 && err == nil:
			permits = append(permits, p)
			t.Fatalf("holder %d: TryAcquire got a third permit of 2", holder)
		case holder == 2 && !errors.Is(err, ErrTaken):
			t.Errorf("holder %d: TryAcquire = %v; want ErrTaken", holder, err)
		}
		if err == nil {
			permits = append(permits, p)
		}
	}
	for _, p := range permits {
		p.Release(t.Context())
	}
}

// The Mutex's options mean the same on a Semaphore: WithMaxHold caps a
// permit, whose slot then expires at the end of its last confirmed validity.
func TestSemaphoreWithMaxHold(t *testing.T) {
	mrs, clients := servers(t, 3)
	tickClocks(t, mrs)
	const ttl, maxHold = time.Second, 300 * time.Millisecond
	c := newClient(t, clients, WithTTL(ttl), WithRetryDelay(10*time.Millisecond))
	s := c.NewSemaphore("maxhold", 1, WithMaxHold(maxHold))
	start := time.Now()
	p, err := s.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Context().Done():
	case <-time.After(3 * time.Second):
		t.Fatalf("permit's Context still live 3s after acquisition; WithMaxHold(%v)", maxHold)
	}
	if held := time.Since(start); held < maxHold {
		t.Errorf("permit's Context ended after %v; want no earlier than WithMaxHold's %v", held, maxHold)
	}
	cause := context.Cause(p.Context())
	if !errors.Is(cause, ErrLockLost) || !strings.Contains(cause.Error(), "WithMaxHold") {
		t.Errorf("Cause(Context()) = %v; want ErrLockLost naming WithMaxHold", cause)
	}
	if err := p.Release(t.Context()); !errors.Is(err, ErrLockLost) {
		t.Errorf("Release of a permit past its max hold = %v; want ErrLockLost", err)
	}
	// Nobody extends the slot any more: another holder gets it within a TTL.
	ctx, cancel := context.WithTimeout(t.Context(), ttl+time.Second)
	defer cancel()
	q, err := c.NewSemaphore("maxhold", 1).Acquire(ctx)
	if err != nil {
		t.Fatalf("Acquire after the holder's max hold = %v; want the permit within a TTL", err)
	}
	q.Release(t.Context())
}

// WithWaitTimeout bounds Acquire's wait, as it bounds LockContext's.
func TestSemaphoreWithWaitTimeout(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients, WithRetryDelay(10*time.Millisecond))
	p, err := c.NewSemaphore("waittimeout", 1).Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(t.Context())
	s := c.NewSemaphore("waittimeout", 1, WithWaitTimeout(100*time.Millisecond))
	start := time.Now()
	_, err = s.Acquire(t.Context())
	for _, want := range []error{ErrNotAcquired, context.DeadlineExceeded, ErrTaken} {
		if !errors.Is(err, want) {
			t.Errorf("Acquire with WithWaitTimeout and every permit held = %v; want it to wrap %v", err, want)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Acquire with WithWaitTimeout(100ms) returned after %v", took)
	}
}

// A frozen master, one of three, neither stops a Semaphore nor lets in a
// holder too many; a majority down gives ErrNoQuorum.
func TestSemaphoreWithMastersFrozenOrDown(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 7)
	c := newClient(t, clients, WithNodeTimeout(100*time.Millisecond))
	s := c.NewSemaphore("frozen", 2)
	hooks[0].pause()
	defer hooks[0].resume()
	var held []*Permit
	for range 2 {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		p, err := s.Acquire(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Acquire with one master of three frozen = %v; want a permit", err)
		}
		held = append(held, p)
	}
	if _, err := s.TryAcquire(t.Context()); !errors.Is(err, ErrTaken) {
		t.Errorf("TryAcquire of a third permit of 2, one master frozen = %v; want ErrTaken", err)
	}
	for _, p := range held {
		if err := p.Release(t.Context()); err != nil {
			t.Errorf("Release = %v", err)
		}
	}
	mrs[1].Close()
	_, err := s.TryAcquire(t.Context())
	if !errors.Is(err, ErrNoQuorum) || !errors.Is(err, ErrNotAcquired) {
		t.Errorf("TryAcquire with one master frozen and one down = %v; want ErrNoQuorum", err)
	}
}

// A node that stores another limit is a mismatch even when the round was
// won on the others: its answer, heard before the round was decided, is not
// ignored.
func TestSemaphorePermitsMismatchOnAMinority(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 11)
	c := newClient(t, clients)
	s := c.NewSemaphore("minority", 3)
	mrs[0].Set(s.keys.limit, "2")
	// The other nodes answer after node 0 has.
	for _, h := range hooks[1:] {
		h.add(&fault{after: 50 * time.Millisecond})
	}
	p, err := s.TryAcquire(t.Context())
	if err == nil {
		p.Release(t.Context())
	}
	if !errors.Is(err, ErrPermitsMismatch) {
		t.Fatalf("TryAcquire with node 0 storing a limit of 2 = %v; want ErrPermitsMismatch", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "has 3 permits") || !strings.Contains(msg, "a limit of 2") {
		t.Errorf("TryAcquire = %q; want both numbers named", msg)
	}
	for _, h := range hooks {
		h.clear()
	}
	slotsFreed(t, mrs, s, "after the mismatch")
}

// kindRecorder is an Observer that keeps the kind of each event it gets.
type kindRecorder struct {
	mu    sync.Mutex
	kinds map[string][]Kind // by event
}

func (r *kindRecorder) note(event string, kind Kind) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kinds[event] = append(r.kinds[event], kind)
}

func (r *kindRecorder) observer() *Observer {
	r.kinds = map[string][]Kind{}
	return &Observer{
		Acquired:    func(e AcquiredEvent) { r.note("Acquired", e.Kind) },
		NotAcquired: func(e NotAcquiredEvent) { r.note("NotAcquired", e.Kind) },
		Released:    func(e ReleasedEvent) { r.note("Released", e.Kind) },
		Extended:    func(e ExtendedEvent) { r.note("Extended", e.Kind) },
		Lost:        func(e LostEvent) { r.note("Lost", e.Kind) },
	}
}

// Every event of a permit names the Semaphore's kind, and every event of a
// Mutex's acquisition the Mutex's, through the same Observer.
func TestEventsNameTheirKind(t *testing.T) {
	mrs, clients := servers(t, 3)
	tickClocks(t, mrs)
	var rec kindRecorder
	c := newClient(t, clients, WithObserver(rec.observer()), WithTTL(300*time.Millisecond))
	s := c.NewSemaphore("kinds", 1)
	m, other := c.NewMutex("kinds"), c.NewMutex("kinds")
	for _, tt := range []struct {
		kind    Kind
		name    string
		keys    []string
		acquire func() (context.Context, func() error, error)
		contend func() error
	}{
		{KindSemaphore, "semaphore", s.keys.slots, func() (context.Context, func() error, error) {
			p, err := s.Acquire(t.Context())
			if err != nil {
				return nil, nil, err
			}
			return p.Context(), func() error { return p.Release(t.Context()) }, nil
		}, func() error { _, err := s.TryAcquire(t.Context()); return err }},
		{KindMutex, "mutex", []string{m.key}, func() (context.Context, func() error, error) {
			held, err := m.LockContext(t.Context())
			return held, func() error { return m.UnlockContext(t.Context()) }, err
		}, func() error { _, err := other.TryLockContext(t.Context()); return err }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec.observer() // forget the events so far
			held, release, err := tt.acquire()
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.contend(); err == nil {
				t.Fatalf("a second %s acquired while the first held", tt.name)
			}
			// Hold through an extension (every 100ms), then lose it.
			waitFor(t, "an extension", func() bool {
				rec.mu.Lock()
				defer rec.mu.Unlock()
				return len(rec.kinds["Extended"]) > 0
			})
			for _, mr := range mrs {
				for _, key := range tt.keys {
					mr.Del(key)
				}
			}
			<-held.Done()
			if err := release(); !errors.Is(err, ErrLockLost) {
				t.Errorf("release after the keys were deleted = %v; want ErrLockLost", err)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			for _, event := range []string{"Acquired", "NotAcquired", "Released", "Extended", "Lost"} {
				kinds := rec.kinds[event]
				if len(kinds) == 0 {
					t.Errorf("no %s event", event)
				}
				for _, kind := range kinds {
					if kind != tt.kind {
						t.Errorf("%s event of a %s names the kind %v; want %v", event, tt.name, kind, tt.kind)
					}
				}
			}
		})
	}
	if got := fmt.Sprint(KindMutex, KindSemaphore); got != "mutex semaphore" {
		t.Errorf("the kinds' names are %q; want mutex semaphore", got)
	}
}

// A nil context is misuse, named as such, on every call that takes one.
func TestSemaphoreNilContextPanics(t *testing.T) {
	_, clients := servers(t, 3)
	s := newClient(t, clients).NewSemaphore("nil", 1)
	p, err := s.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(t.Context())
	calls := map[string]func(){
		"Acquire":    func() { s.Acquire(nil) },
		"TryAcquire": func() { s.TryAcquire(nil) },
		"Status":     func() { s.Status(nil) },
		"Do":         func() { s.Do(nil, func(context.Context) error { return nil }) },
		"Release":    func() { p.Release(nil) },
	}
	for name, call := range calls {
		if msg := panicMessage(call); msg != "redlock: nil Context" {
			t.Errorf("%s(nil) panicked with %q; want redlock: nil Context", name, msg)
		}
	}
	if p.Context().Err() != nil {
		t.Error("Release(nil) ended the permit")
	}
}

// With more permits than a refusal reports on, one free permit among many
// held is still found by one attempt: TryAcquire says ErrTaken only when
// every permit is held.
func TestSemaphoreTryAcquireFindsTheLastFreePermitOfMany(t *testing.T) {
	_, clients := servers(t, 3)
	const permits = 4 * slotWindow
	s := newClient(t, clients, WithRetryDelay(time.Millisecond), WithRetryJitter(time.Millisecond)).NewSemaphore("many", permits)
	var held []*Permit
	for range permits - 1 {
		p, err := s.Acquire(t.Context())
		if err != nil {
			t.Fatalf("Acquire %d of %d = %v", len(held)+1, permits, err)
		}
		held = append(held, p)
	}
	for i := range 10 {
		p, err := s.TryAcquire(t.Context())
		if err != nil {
			t.Fatalf("TryAcquire %d with 1 of %d permits free = %v; want the free one", i, permits, err)
		}
		if err := p.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range held {
		p.Release(t.Context())
	}
}

// DESIGN.md, "Lifecycle": "Nothing leaks. Every node that may have granted
// a failed, abandoned or lost attempt gets a release for that value,
// whenever its grant arrives"; Close's doc: it waits for every background
// call, and only a key "on a node that does not answer expires with its
// TTL".
//
// Close's sweep releases a node's leftovers within two node timeouts, and
// then forgets the rest: a node that answers every call well within the
// node timeout, with leftovers on several keys (timed-out grants, as
// granting.heard remembers them; a Semaphore has a key per permit), keeps
// none after Close. (From a review of the Semaphore: one call per key, one
// after the other, left 3 to 5 of 8 keys.) The test makes those leftovers as the lease does
// (remember), on the 8 slots of node 0, whose forget calls each take 6ms
// of a 20ms node timeout, and closes the Client.
func TestCloseSweepReleasesEveryLeftover(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 7)
	c, err := New(clients, WithNodeTimeout(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	verifyAll(c)
	const permits = 8
	s := c.NewSemaphore("sweep", permits)
	n := c.nodes[0]
	for slot := range permits {
		spec := s.slots.get(slot)
		value := newValue()
		mrs[0].Set(s.keys.slots[slot], value)
		n.remember(spec.kind.forgetting(), value, spec.nodeTimeout)
	}
	hooks[0].add(&fault{match: isKind("forget"), before: 6 * time.Millisecond})
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	took := time.Since(start)
	hooks[0].clear()
	hooks[0].wait()
	if left := slotsHeldOn(mrs[0], s); left != 0 {
		t.Errorf("node 0, which answered every call within 6ms of its 20ms timeout, still holds %d of %d leftover slots after Close (Close took %v)", left, permits, took)
	}
}

// The limit lives as long as a permit is held: each extension of a slot
// renews it, and a repair sets it again on a master that lost it with the
// slot, so that a Semaphore with another number of permits is turned away
// at its first call however long the holder has held its permit. (From a
// review: the limit lived a day after the last grant alone, and a permit
// held longer let a Semaphore of 2 permits acquire beside a Semaphore of 1,
// with no ErrPermitsMismatch.) The limit is given 500ms left, as if the
// holder had held its permit for a day less 500ms; the servers' clocks
// tick with real time.
func TestSemaphoreLimitLivesWhilePermitHeld(t *testing.T) {
	mrs, clients := servers(t, 3)
	tickClocks(t, mrs)
	a := newClient(t, clients, WithTTL(600*time.Millisecond)).NewSemaphore("lapse", 1)
	p, err := a.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(context.Background())
	for _, mr := range mrs {
		mr.SetTTL(a.keys.limit, 500*time.Millisecond)
	}
	time.Sleep(time.Second)
	if p.Context().Err() != nil {
		t.Fatalf("the holder's permit ended: %v", context.Cause(p.Context()))
	}
	for i, mr := range mrs {
		if ttl := mr.TTL(a.keys.limit); ttl < limitLifetime-time.Minute {
			t.Errorf("node %d: the limit's TTL = %v after the holder's extensions; want about %v", i, ttl, limitLifetime)
		}
	}
	// Node 0 forgets the slot and the limit, as a restart would: the
	// watchdog's repair puts both back.
	mrs[0].Del(a.keys.slots[0])
	mrs[0].Del(a.keys.limit)
	waitFor(t, "the repair of node 0", func() bool {
		return mrs[0].Exists(a.keys.slots[0]) && mrs[0].Exists(a.keys.limit)
	})
	if got, _ := mrs[0].Get(a.keys.limit); got != "1" {
		t.Errorf("node 0: the repaired limit = %q; want %q", got, "1")
	}
	b := newClient(t, clients, WithTTL(600*time.Millisecond)).NewSemaphore("lapse", 2)
	q, err := b.TryAcquire(t.Context())
	if err == nil {
		defer q.Release(context.Background())
		t.Fatal("a Semaphore of 2 permits acquired while a Semaphore of 1 permit holds the name; want ErrPermitsMismatch at the first call")
	}
	if !errors.Is(err, ErrPermitsMismatch) {
		t.Errorf("TryAcquire = %v; want ErrPermitsMismatch", err)
	}
}

// A node that stores another limit and answers after a quorum granted the
// slot ends the permit that the first call returned: its Context ends with
// a cause that wraps ErrPermitsMismatch and ErrLockLost, naming both
// numbers, and the slot is released on every node. (From a review: the
// round was decided at the quorum and the slow node never heard, so the
// permit was held beside a user of another number.) The mirror of
// TestSemaphorePermitsMismatchOnAMinority, with node 0 slow instead of
// fast.
func TestSemaphorePermitsMismatchOnASlowMinorityEndsThePermit(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 11)
	c := newClient(t, clients)
	s := c.NewSemaphore("slowminority", 3)
	mrs[0].Set(s.keys.limit, "2")
	hooks[0].add(&fault{after: 50 * time.Millisecond})
	p, err := s.TryAcquire(t.Context())
	if err != nil {
		if !errors.Is(err, ErrPermitsMismatch) {
			t.Fatalf("TryAcquire = %v; want a permit, or ErrPermitsMismatch", err)
		}
		return // node 0 was heard before the round was decided
	}
	select {
	case <-p.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the permit still held 5s after node 0 answered with a limit of 2")
	}
	cause := context.Cause(p.Context())
	if !errors.Is(cause, ErrPermitsMismatch) || !errors.Is(cause, ErrLockLost) {
		t.Errorf("the permit's cause = %v; want ErrPermitsMismatch and ErrLockLost", cause)
	}
	if msg := fmt.Sprint(cause); !strings.Contains(msg, "has 3 permits") || !strings.Contains(msg, "a limit of 2") {
		t.Errorf("the permit's cause = %q; want both numbers named", msg)
	}
	if err := p.Release(t.Context()); !errors.Is(err, ErrPermitsMismatch) {
		t.Errorf("Release = %v; want the loss, ErrPermitsMismatch", err)
	}
	hooks[0].clear()
	slotsFreed(t, mrs, s, "after the mismatch")
}

// P TryAcquires at once, on P Clients, on a free Semaphore of P permits
// over three masters all get a permit: there is one for each, so at no
// moment are all P held by the others, and DESIGN.md's "ErrTaken when every
// permit is held" gives none of them ErrTaken. An attempt asks for up to P
// slots that the refusals report free, and, when the refusals show every
// slot taken, by rivals whose rounds may be about to lose, reads the slots
// again after a pause and tries once more. (From a review: with P = 6 a
// few failed with ErrTaken in most runs, and with P = 3 now and then: an
// attempt gave up after 3 slot rounds lost to collisions, or when the
// refusals of one round showed every slot taken by attempts that were
// themselves about to lose.)
func TestSemaphoreTryAcquireContendersAllFit(t *testing.T) {
	for _, permits := range []int{3, 6} {
		t.Run(fmt.Sprint(permits), func(t *testing.T) {
			_, clients := servers(t, 3)
			var sems []*Semaphore
			for range permits {
				sems = append(sems, newClient(t, clients).NewSemaphore("fit", permits))
			}
			failures := 0
			var first error
			const rounds = 30
			for range rounds {
				var wg sync.WaitGroup
				got := make([]*Permit, permits)
				errs := make([]error, permits)
				for i, s := range sems {
					wg.Go(func() { got[i], errs[i] = s.TryAcquire(t.Context()) })
				}
				wg.Wait()
				for i, err := range errs {
					if err != nil && errors.Is(err, ErrNoQuorum) {
						continue // a node slow on a loaded machine: not what this test is about
					}
					if err != nil {
						failures++
						if first == nil {
							first = err
						}
						continue
					}
					got[i].Release(context.Background())
				}
			}
			if failures > 0 {
				t.Errorf("%d of %d TryAcquires failed with ErrTaken alone, with a permit free for each contender; the first: %v", failures, permits*rounds, first)
			}
		})
	}
}

// Close ends a waiter queued on a Semaphore whose permits are held with
// ErrClosed, promptly, and the holder's permit with a cause that wraps
// ErrLockLost and ErrClosed; no slot and no queue entry is left on any
// node. (From a review, where it passed: DESIGN.md's Close "waits for lock
// calls in progress, which end with ErrClosed".)
func TestSemaphoreCloseEndsWaiterAndPermit(t *testing.T) {
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

// A waiter of a Semaphore whose permits are all held, and whose ctx ends,
// is taken out of the queue on every node: Status then counts the holders
// and no waiter. (From a review, where it passed.)
func TestSemaphoreWaiterThatGivesUpLeavesTheQueue(t *testing.T) {
	mrs, clients := servers(t, 3)
	s := newClient(t, clients).NewSemaphore("giveup", 2)
	permits := holdAll(t, s)
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
