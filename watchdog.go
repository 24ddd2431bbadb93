package redlock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// startWatchdog runs the watchdog of h, owned by the Client, unless the
// Client is closing, in which case the lock is given up at once.
func (m *Mutex) startWatchdog(h *holding) {
	c := m.client
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		m.loseLock(h, fmt.Errorf("%w: %w", ErrLockLost, ErrClosed))
		close(h.done)
		return
	}
	c.watchdogs.Go(func() { m.watchdog(h) })
}

// extension is the result of one extension round.
type extension struct {
	start time.Time
	out   outcome
}

// watchdog extends the lock every interval until Unlock, and declares it lost
// when a quorum of nodes says it is gone or taken, or when its validity ends
// with no quorum confirmed. The validity timer is what guarantees the held
// context ends in time: it fires even while every extension round hangs,
// half the drift allowance before the validity ends.
func (m *Mutex) watchdog(h *holding) {
	defer close(h.done)
	c := m.client
	interval := m.cfg.extendInterval()
	ttl, drift, timeout := m.cfg.ttl, m.cfg.drift(), m.cfg.perNodeTimeout()
	extend := extendCall(m.key, h.value, ttl)

	// The expiry timer fires a little before the validity ends, so that
	// timer and scheduling delays cannot push the cancellation past it.
	guard := drift / 2
	m.mu.Lock()
	until := h.until
	m.mu.Unlock()
	expiry := time.NewTimer(time.Until(until) - guard)
	defer expiry.Stop()
	next := time.NewTimer(interval)
	defer next.Stop()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan extension, 1)
	inFlight := false
	defer func() {
		if inFlight {
			cancel()
			<-results // the round returns promptly once ctx is cancelled
		}
	}()

	for {
		select {
		case <-h.stop:
			return
		case <-c.closing:
			m.loseLock(h, fmt.Errorf("%w: %w", ErrLockLost, ErrClosed))
			return
		case <-expiry.C:
			m.loseLock(h, fmt.Errorf("%w: no quorum confirmed it before its validity ended at %v", ErrLockLost, until.Format(time.RFC3339Nano)))
			return
		case <-next.C:
			inFlight = true
			go func() {
				start := time.Now()
				results <- extension{start: start, out: c.fanOut(ctx, timeout, extend, nil)}
			}()
		case ext := <-results:
			inFlight = false
			switch {
			case ext.out.won:
				if end := validityEnd(ext.start, ttl, drift); end.After(until) {
					until = end
					m.mu.Lock()
					h.until = until
					m.mu.Unlock()
					expiry.Reset(time.Until(until) - guard)
				}
				m.repair(ext.out, h, until)
				next.Reset(interval)
			case ext.out.refusals >= quorum(len(c.nodes)):
				m.loseLock(h, fmt.Errorf("%w: %d of %d nodes no longer hold it", ErrLockLost, ext.out.refusals, len(c.nodes)))
				return
			default:
				// Too few answers: try again sooner, while validity remains.
				m.cfg.logger.Warn("redlock: extension failed; retrying", "lock", m.name, "error", ext.out.errs)
				next.Reset(max(interval/4, time.Millisecond))
			}
		}
	}
}

// repair sets the key again, with SET NX, on the nodes that said in a won
// extension round that they no longer have it (one restarted, say), so that
// one more node failure does not lose the lock. It does so only while the
// validity confirmed by that round lasts, and never over another holder's
// key. The calls are owned by the nodes and not waited for; one that lands
// after Unlock released the lock undoes itself.
func (m *Mutex) repair(out outcome, h *holding, until time.Time) {
	c := m.client
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return
	}
	timeout := m.cfg.perNodeTimeout()
	for i, n := range c.nodes {
		if !out.answered[i] || !out.replies[i].refused() {
			continue
		}
		remaining := time.Until(until)
		if remaining <= timeout {
			return // too little validity left to be worth it
		}
		n.start(timeout, func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			// The key lives no longer than the validity confirmed by
			// the quorum; the next extension pushes it on.
			ok, err := n.client.SetNX(ctx, m.key, h.value, remaining.Truncate(time.Millisecond)).Result()
			if !ok || err != nil {
				return
			}
			if h.released.Load() {
				releaseCall(m.key, h.value, "", false)(ctx, n)
				return
			}
			m.cfg.logger.Info("redlock: lock repaired on a node that had lost it", "lock", m.name, "node", n.index, "addr", n.addr)
		})
	}
}

// loseLock records that h was lost and ends its held context with cause.
func (m *Mutex) loseLock(h *holding, cause error) {
	m.mu.Lock()
	h.lost = cause
	m.mu.Unlock()
	h.cancel(cause)
	level := slog.LevelWarn
	if errors.Is(cause, ErrClosed) {
		level = slog.LevelInfo
	}
	m.cfg.logger.Log(context.Background(), level, "redlock: lock lost", "lock", m.name, "cause", cause)
}
