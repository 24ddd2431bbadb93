package redlock

import (
	"errors"
	"strings"
	"testing"
)

func TestUnlockOfUnlockedMutexPanics(t *testing.T) {
	_, clients := servers(t, 1)
	m := newClient(t, clients).NewMutex("x")
	if got, want := panicMessage(m.Unlock), "redlock: unlock of unlocked mutex"; got != want {
		t.Errorf("Unlock of unlocked mutex panicked with %q; want %q", got, want)
	}
}

func TestTryLock(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients)
	m := c.NewMutex("try")
	if !m.TryLock() {
		t.Fatal("TryLock of a free lock = false")
	}
	if m.TryLock() {
		t.Error("TryLock of a lock this Mutex holds = true")
	}
	other := newClient(t, clients).NewMutex("try")
	_, err := other.TryLockContext(t.Context())
	if !errors.Is(err, ErrNotAcquired) {
		t.Errorf("TryLockContext of a lock held elsewhere = %v; want ErrNotAcquired", err)
	}
	m.Unlock()
	if !other.TryLock() {
		t.Error("TryLock after Unlock = false")
	}
	other.Unlock()
}

func TestLockPanicsOnPermanentErrors(t *testing.T) {
	mrs, clients := servers(t, 3)
	for _, mr := range mrs {
		mr.RequireAuth("secret")
	}
	m := newClient(t, clients).NewMutex("denied")
	msg := panicMessage(m.Lock)
	if !strings.HasPrefix(msg, "redlock: ") || !strings.Contains(msg, "NOAUTH") {
		t.Errorf("Lock panicked with %q; want a redlock: message naming NOAUTH", msg)
	}
	if _, err := m.LockContext(t.Context()); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("LockContext = %v; want an error naming NOAUTH", err)
	}
}
