package redlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

var _ sync.Locker = (*Mutex)(nil)

// Lock acquires the lock, blocking until it is held, like sync.Mutex.Lock.
// Transient failures, such as a node down or a timeout, are retried and
// logged. Lock panics only on an error retrying cannot fix (bad
// configuration, a closed Client, an ACL or script error on too many nodes),
// and the panic names the cause. Lock ignores WithWaitTimeout. The lock is
// extended until Unlock; to learn that it was lost, use LockContext.
func (m *Mutex) Lock() {
	if _, err := m.acquire(context.Background(), context.Background(), false); err != nil {
		panic(fmt.Errorf("redlock: Lock of %q cannot succeed: %w", m.name, err))
	}
}

// TryLock makes one attempt to acquire the lock and reports whether it
// succeeded. It returns false when the lock is taken and on any error.
func (m *Mutex) TryLock() bool {
	_, err := m.TryLockContext(context.Background())
	return err == nil
}

// Unlock releases the lock, like sync.Mutex.Unlock. It panics if the Mutex is
// not locked. A lost lock is not misuse: Unlock then releases what it can and
// returns. Node errors are logged; use UnlockContext to receive them.
func (m *Mutex) Unlock() {
	err := m.UnlockContext(context.Background())
	switch {
	case err == nil:
	case err == m.err:
		panic(fmt.Errorf("redlock: Unlock of %q cannot succeed: %w", m.name, err))
	case errors.Is(err, ErrNotHeld):
		panic("redlock: unlock of unlocked mutex")
	default:
		m.cfg.logger.Warn("redlock: unlock incomplete", "lock", m.name, "error", err)
	}
}
