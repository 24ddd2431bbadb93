//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/seed62cefe0a/redlock"
)

// lock is what run holds while COMMAND runs: a Mutex's lock, or with -n one
// permit of a Semaphore. Each acquire is followed by one release at most.
type lock interface {
	// label names the lock in diagnostics, with its name quoted.
	label() string
	// acquire takes the lock: one attempt with once, or else waiting until
	// ctx ends, or the Client's wait timeout (-wait) passes. held ends when
	// the lock is lost, or when ctx ends.
	acquire(ctx context.Context, once bool) (held context.Context, err error)
	// release gives the lock back, waiting for the masters no longer than
	// ctx allows.
	release(ctx context.Context) error
	// vars are the variables that COMMAND's environment gets beyond
	// REDLOCK_NAME, such as REDLOCK_TOKEN with -fencing, as KEY=VALUE.
	vars() []string
}

// newLock returns the lock that run uses for name: a Mutex, or a Semaphore
// of permits.n permits if -n was given.
func newLock(client *redlock.Client, name string, f runFlags) lock {
	if f.permits.set {
		return &permitLock{s: client.NewSemaphore(name, f.permits.n)}
	}
	return mutexLock{client.NewMutex(name), f.fencing}
}

// mutexLock is run's lock without -n.
type mutexLock struct {
	m       *redlock.Mutex
	fencing bool
}

func (l mutexLock) label() string { return fmt.Sprintf("lock %q", l.m.Name()) }

func (l mutexLock) acquire(ctx context.Context, once bool) (context.Context, error) {
	if once {
		return l.m.TryLockContext(ctx)
	}
	return l.m.LockContext(ctx)
}

func (l mutexLock) release(ctx context.Context) error { return l.m.UnlockContext(ctx) }

func (l mutexLock) vars() []string {
	if !l.fencing {
		return nil
	}
	return []string{"REDLOCK_TOKEN=" + strconv.FormatUint(l.m.Token(), 10)}
}

// permitLock is run's lock with -n: a permit of a Semaphore, set once
// acquire has returned.
type permitLock struct {
	s *redlock.Semaphore
	p *redlock.Permit
}

func (l *permitLock) label() string {
	return fmt.Sprintf("semaphore %q (%d permits)", l.s.Name(), l.s.Permits())
}

func (l *permitLock) acquire(ctx context.Context, once bool) (context.Context, error) {
	var err error
	if once {
		l.p, err = l.s.TryAcquire(ctx)
	} else {
		l.p, err = l.s.Acquire(ctx)
	}
	if err != nil {
		return nil, err
	}
	return l.p.Context(), nil
}

func (l *permitLock) release(ctx context.Context) error { return l.p.Release(ctx) }
func (l *permitLock) vars() []string                    { return nil }

// termLock is elect's lock: a term of an Election, set once acquire has
// returned.
type termLock struct {
	e     *redlock.Election
	value string
	t     *redlock.Term
}

func (l *termLock) label() string { return fmt.Sprintf("election %q", l.e.Name()) }

// acquire campaigns; elect has no single attempt, so once is never set.
func (l *termLock) acquire(ctx context.Context, _ bool) (context.Context, error) {
	var err error
	if l.t, err = l.e.Campaign(ctx, l.value); err != nil {
		return nil, err
	}
	return l.t.Context(), nil
}

func (l *termLock) release(ctx context.Context) error { return l.t.Resign(ctx) }

func (l *termLock) vars() []string {
	return []string{"REDLOCK_TERM=" + strconv.FormatUint(l.t.Number(), 10)}
}

// permitsFlag is -n: unset for a lock, or a semaphore's number of permits,
// in [1, redlock.MaxPermits].
type permitsFlag struct {
	n   int
	set bool
}

func (p *permitsFlag) String() string {
	if !p.set {
		return ""
	}
	return strconv.Itoa(p.n)
}

func (p *permitsFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("parse error")
	}
	if n < 1 || n > redlock.MaxPermits {
		return fmt.Errorf("%d permits is outside [1, %d]", n, redlock.MaxPermits)
	}
	p.n, p.set = n, true
	return nil
}
