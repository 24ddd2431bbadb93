package redlock

import (
	"context"
	"errors"
	"fmt"
)

// Do runs fn while holding the lock: it acquires the lock as LockContext
// does, calls fn with the held context, and releases the lock when fn
// returns, with a context that the end of ctx does not cancel, bounded by
// three node timeouts (for an extension and a repair in flight, then the
// release). It returns nil only if fn returned nil and the lock was held
// until fn returned. If the lock was lost, the error wraps ErrLockLost, even
// when fn returned nil; errors from fn, the loss and the release are joined.
// If the lock is not acquired, fn is not called and the error is
// LockContext's. If fn panics, Do releases the lock and panics again with
// the same value. fn should return soon after held ends. Do panics if ctx or
// fn is nil.
func (m *Mutex) Do(ctx context.Context, fn func(held context.Context) error) error {
	mustContext(ctx)
	if fn == nil {
		panic("redlock: Do with a nil func")
	}
	held, err := m.LockContext(ctx)
	if err != nil {
		return err
	}
	l := held.(*heldContext).l
	returned := false
	defer func() {
		if !returned { // fn panicked, or called runtime.Goexit
			if err := m.releaseDo(ctx, l); err != nil && !errors.Is(err, ErrNotHeld) {
				m.cfg.logger.Warn("redlock: release after a panic in Do incomplete", "lock", m.name, "error", err)
			}
		}
	}()
	fnErr := fn(held)
	returned = true
	return errors.Join(fnErr, m.releaseDo(ctx, l))
}

// releaseDo ends Do's lease l, unless fn already unlocked the Mutex; then
// it reports that, with the loss if l had been lost.
func (m *Mutex) releaseDo(ctx context.Context, l *lease) error {
	if !m.current.CompareAndSwap(l, nil) {
		return errors.Join(fmt.Errorf("%w: the Mutex was unlocked inside Do", ErrNotHeld), l.lostCause())
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*m.spec.nodeTimeout)
	defer cancel()
	return m.unlock(ctx, l)
}
