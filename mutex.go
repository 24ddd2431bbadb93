package redlock

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Mutex is a lock shared by every process that makes a Mutex of the same name
// over the same masters. Goroutines of one process that share a *Mutex are
// serialised locally before they contend remotely. A Mutex must not be copied
// after first use. Make one with Client.NewMutex; the zero value is not
// usable.
type Mutex struct {
	client *Client
	name   string
	key    string // prefix + "{" + name + "}": the lock's keys share a hash slot
	cfg    config
	err    error // bad configuration, reported by every call
	args   mutexArgs

	// local is the process-local lock: a token in it means a goroutine of
	// this process holds or is acquiring the remote lock.
	local chan struct{}

	mu   sync.Mutex // guards held, expiry and the fields of *held that change
	held *holding
	// expiry ends the held context before its validity ends, unless an
	// extension has moved the end. One timer serves every holding.
	expiry *time.Timer

	// queued is set when this Mutex's last release woke a queued waiter:
	// its next Lock then queues behind it instead of trying first, so that
	// a releaser does not snatch the lock back from the waiter it woke.
	queued atomic.Bool
}

// holding is one acquisition, from the grant until Unlock.
type holding struct {
	value  string    // random, unique to this acquisition
	token  uint64    // fencing token, or 0 without fencing
	waiter string    // id under which it waited in the lock's queue, or ""
	until  time.Time // end of validity; moved forward by the watchdog
	lost   error     // why the lock was lost, or nil
	round  *round    // the acquisition round, whose late grants Unlock undoes
	// released is set by Unlock before it releases, so that a repair
	// landing later undoes itself.
	released atomic.Bool
	cancel   context.CancelCauseFunc
	held     heldContext // what LockContext returned
	mutex    *Mutex

	guard time.Duration // how long before the validity ends expiry fires

	// Guarded by mutex.mu:
	stopped bool // Unlock has begun: the lock is no longer watched

	// Guarded by the watchdog's mu:
	extendAt  time.Time // next extension
	retry     bool      // extendAt is a retry after a failed round: not early
	heapIndex int       // in the watchdog's queue, or -1 if not queued
}

// NewMutex returns a Mutex for the lock called name. The options override the
// Client's for this Mutex. An empty name or an invalid option is reported by
// every call on the Mutex: LockContext, TryLockContext and UnlockContext
// return the error and Lock panics with it. NewMutex does not contact Redis.
func (c *Client) NewMutex(name string, opts ...Option) *Mutex {
	cfg := c.cfg
	cfg.errs = nil
	cfg.apply(opts)
	err := cfg.validate()
	if name == "" {
		err = errors.Join(errors.New("redlock: mutex name is empty"), err)
	}
	key := cfg.keyPrefix + "{" + name + "}"
	return &Mutex{
		client: c,
		name:   name,
		key:    key,
		args:   newMutexArgs(key, cfg.ttl),
		cfg:    cfg,
		err:    err,
		local:  make(chan struct{}, 1),
	}
}

// Name returns the name the Mutex was made with.
func (m *Mutex) Name() string { return m.name }

// Until returns the end of the lock's validity: until then no other holder can
// acquire it, assuming bounded clock drift. It is the zero time when the lock
// is not held or was lost. The watchdog moves it forward while the lock is held.
func (m *Mutex) Until() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held == nil || m.held.lost != nil {
		return time.Time{}
	}
	return m.held.until
}

// Token returns the fencing token of the current acquisition: larger than the
// token of every earlier holder of the lock, so that a resource that remembers
// the largest token it has seen can reject a stale holder. It is 0 when the
// lock is not held or was lost, and always without WithFencing.
func (m *Mutex) Token() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held == nil || m.held.lost != nil {
		return 0
	}
	return m.held.token
}

// LockContext acquires the lock, waiting until it is free or ctx is done.
// It returns held, a context derived from ctx that ends when ctx ends, when
// Unlock is called, or when the lock is lost; in the last case
// context.Cause(held) wraps ErrLockLost. If ctx ends first, the error wraps
// ErrNotAcquired and ctx.Err(). Transient node failures are retried; an error
// that retrying cannot fix on enough nodes to rule out a quorum (an ACL denial,
// a closed client) is returned at once. With WithWaitTimeout the wait also
// ends after that long, while held stays bounded by ctx alone. When ctx ends
// after the lock is acquired, the lock stays held until Unlock. held.Err()
// is not nil once the lock's validity has ended, even where its timer is
// late (a process that has just woken from a long pause): check it before
// each step of work that must not outlive the lock.
func (m *Mutex) LockContext(ctx context.Context) (held context.Context, err error) {
	waitCtx := ctx
	if m.cfg.waitTimeout > 0 {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, m.cfg.waitTimeout)
		defer cancel()
	}
	return m.lock(ctx, waitCtx)
}

// TryLockContext makes one attempt to acquire the lock, bounded by ctx and the
// node timeout. It returns an error wrapping ErrNotAcquired if the lock is
// taken, locally or remotely, or if too few nodes granted it. On success,
// held is as for LockContext.
func (m *Mutex) TryLockContext(ctx context.Context) (held context.Context, err error) {
	if err := m.usable(); err != nil {
		return nil, err
	}
	select {
	case m.local <- struct{}{}:
	default:
		return nil, fmt.Errorf("%w: held by another goroutine of this process", ErrNotAcquired)
	}
	held, _, err = m.attempt(ctx, ctx, "")
	if err != nil {
		<-m.local
		return nil, err
	}
	return held, nil
}

// usable reports bad configuration or a closed Client.
func (m *Mutex) usable() error {
	if m.err != nil {
		return m.err
	}
	if m.client.isClosed() {
		return ErrClosed
	}
	return nil
}

// lock acquires the lock, waiting until waitCtx is done; held derives from ctx.
func (m *Mutex) lock(ctx, waitCtx context.Context) (context.Context, error) {
	if err := m.usable(); err != nil {
		return nil, err
	}
	select {
	case m.local <- struct{}{}:
	case <-waitCtx.Done():
		return nil, m.waitEnded(waitCtx, nil)
	}
	// After a first failed attempt the waiter joins the lock's queue on
	// every node; a release wakes the waiter at the head of the queue by
	// name, so that one release costs one attempt, not one per waiter.
	var wake *watch
	waiter := ""
	acquired := false
	defer func() {
		if wake != nil {
			wake.stop()
		}
		if waiter != "" && !acquired {
			m.leaveQueue(waiter)
		}
	}()
	logged := false
	woken := false   // the last attempt followed a release that named this waiter
	retried := false // the last attempt was made at once, without waiting
	var err error
	if m.queued.Load() {
		// Others were queued when this Mutex last released: queue behind
		// them rather than race the one it woke. If the lock looks free,
		// that waiter may not have tried yet, or may be gone: give it a
		// moment, then try.
		waiter = m.client.notifier.newWaiter()
		wake = m.client.notifier.watch(waiter)
		wake.ready(waitCtx, m.cfg.perNodeTimeout())
		delay := handoffGrace
		if m.queue(waitCtx, waiter, enqueueLast) {
			delay = queuedPollFactor * m.retryDelay()
		}
		woken = m.waitTurn(waitCtx, wake, delay)
	}
	for {
		if waitCtx.Err() != nil || m.client.isClosed() {
			<-m.local
			if m.client.isClosed() {
				return nil, errors.Join(ErrClosed, err)
			}
			return nil, m.waitEnded(waitCtx, err)
		}
		var held context.Context
		var permanent bool
		held, permanent, err = m.attempt(waitCtx, ctx, waiter)
		if err == nil {
			acquired = true
			return held, nil
		}
		if permanent {
			<-m.local
			return nil, err
		}
		m.logRetry(err, &logged)
		// Join the queue (or keep a place in it: back at the front if a
		// release picked this waiter and it still lost).
		mode := enqueueLast
		if wake == nil {
			waiter = m.client.notifier.newWaiter()
			wake = m.client.notifier.watch(waiter)
			wake.ready(waitCtx, m.cfg.perNodeTimeout())
		} else if woken {
			mode = enqueueFirst
		}
		queued := m.queue(waitCtx, waiter, mode)
		if !queued && !retried {
			// No quorum says the lock is held: it may have been released
			// before this waiter was queued to hear of it. Try again once
			// at once.
			woken, retried = false, true
			continue
		}
		delay := m.retryDelay()
		if queued {
			delay *= queuedPollFactor
		}
		woken, retried = m.waitTurn(waitCtx, wake, delay), false
	}
}

// queueTTL is how long a lock's queue outlives its last change: long enough
// for waiters that poll to keep their place, short enough that ids of waiters
// that died do not linger.
func (m *Mutex) queueTTL() time.Duration {
	return max(4*m.cfg.ttl, 20*(m.cfg.retryDelay+m.cfg.retryJitter))
}

// queue puts waiter in the lock's queue (or keeps it there) on the nodes. It
// reports whether a quorum of nodes says the lock is held, in which case a
// release will wake a waiter and there is no point trying before then.
func (m *Mutex) queue(ctx context.Context, waiter, mode string) bool {
	return m.client.fanOut(ctx, m.cfg.perNodeTimeout(), m.enqueueCall(waiter, mode), nil).won
}

// leaveQueue takes a waiter that gave up out of the queue. It waits for a
// quorum at most; the other nodes finish in the background.
func (m *Mutex) leaveQueue(waiter string) {
	m.client.fanOut(context.Background(), m.cfg.perNodeTimeout(), m.enqueueCall(waiter, dequeue), nil)
}

// queuedPollFactor is how many retry delays a waiter waits between attempts
// while it is queued behind a holder: the holder's release wakes it by name,
// so polling is only the fallback for a lost wake-up, or a holder that died
// and whose key must expire. Each poll costs an attempt and a queue refresh
// on every node.
const queuedPollFactor = 10

// handoffGrace is how long a releaser that locks again waits for the waiter
// it woke to take the lock, when the lock looks free: several round trips.
const handoffGrace = 5 * time.Millisecond

// waitTurn waits until a release names this waiter, delay passes, waitCtx
// ends or the Client closes. It reports whether the waiter was woken by name.
func (m *Mutex) waitTurn(waitCtx context.Context, wake *watch, delay time.Duration) bool {
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-wake.C:
		return true
	case <-timer.C:
		return false
	case <-waitCtx.Done():
		return false
	case <-m.client.closing:
		return false
	}
}

// waitEnded is the error of a wait that ctx ended; last is the last
// attempt's error, kept when nodes failed in it.
func (m *Mutex) waitEnded(ctx context.Context, last error) error {
	err := fmt.Errorf("%w: %w", ErrNotAcquired, ctx.Err())
	if cause := context.Cause(ctx); cause != ctx.Err() {
		err = fmt.Errorf("%w: %w", err, cause)
	}
	var nodeErr *NodeError
	if errors.As(last, &nodeErr) {
		err = fmt.Errorf("%w; last attempt: %w", err, last)
	}
	return err
}

// logRetry logs a failed attempt's node errors: the first of a wait at Warn,
// later ones at Debug. A lock taken by another holder is not logged.
func (m *Mutex) logRetry(err error, logged *bool) {
	var nodeErr *NodeError
	level := slog.LevelDebug
	if errors.As(err, &nodeErr) && !*logged {
		level = slog.LevelWarn
		*logged = true
	}
	m.cfg.logger.Log(context.Background(), level, "redlock: attempt failed; retrying", "lock", m.name, "error", err)
}

func (m *Mutex) retryDelay() time.Duration {
	delay := m.cfg.retryDelay
	if m.cfg.retryJitter > 0 {
		delay += mathrand.N(m.cfg.retryJitter)
	}
	return delay
}

// attempt makes one acquisition round, waiting for it no longer than waitCtx
// allows; held derives from ctx. On failure it releases the nodes that may
// have granted the lock, and reports whether the failure is permanent.
// m.local is held.
func (m *Mutex) attempt(waitCtx, ctx context.Context, waiter string) (held context.Context, permanent bool, err error) {
	if err := waitCtx.Err(); err != nil {
		return nil, false, m.waitEnded(waitCtx, nil)
	}
	c := m.client
	value := rand.Text() // 128 bits from crypto/rand
	ttl := m.cfg.ttl
	timeout := m.cfg.perNodeTimeout()
	// What undoes this attempt's grants, made only if it is needed: most
	// attempts either win or meet a refusal, which needs no undoing.
	release := func(ctx context.Context, n *node) reply { return m.releaseCall(value, "", false)(ctx, n) }
	start := time.Now()
	out := c.fanOut(waitCtx, timeout, m.acquireCall(value), release)
	until := validityEnd(start, ttl, m.cfg.drift())
	var token uint64
	var fenceErr error
	if out.won && m.cfg.fencing {
		// Record the token on a quorum before reporting the lock held, so
		// that every later holder reads a larger counter: any two quorums
		// share a node.
		token = out.token()
		fenced := c.fanOut(waitCtx, timeout, m.fenceCall(value, token), nil)
		if !fenced.won {
			fenceErr = fmt.Errorf("%w: fencing token %d reached %d of %d nodes: %w", ErrNotAcquired, token, fenced.oks, len(c.nodes), fenced.errs)
		}
	}
	if out.won && fenceErr == nil && time.Now().Before(until) {
		return m.hold(ctx, value, until, token, waiter, out.round), false, nil
	}
	if out.won {
		// Granted, but unusable: undo it like a lost round.
		out.round.abandon()
	}
	c.releaseLate(out, release, timeout)
	permanent = out.permanentFailures() > len(c.nodes)-quorum(len(c.nodes))
	switch {
	case fenceErr != nil:
		return nil, false, fenceErr
	case out.won:
		return nil, false, fmt.Errorf("%w: acquisition took longer than the TTL allows", ErrNotAcquired)
	case out.errs != nil:
		return nil, permanent, fmt.Errorf("%w: %d of %d nodes granted it: %w", ErrNotAcquired, out.oks, len(c.nodes), out.errs)
	default:
		return nil, false, fmt.Errorf("%w: held by another owner", ErrNotAcquired)
	}
}

// hold records a granted lock and starts its watchdog.
func (m *Mutex) hold(ctx context.Context, value string, until time.Time, token uint64, waiter string, round *round) context.Context {
	inner, cancel := context.WithCancelCause(ctx)
	h := &holding{
		value:     value,
		token:     token,
		waiter:    waiter,
		until:     until,
		round:     round,
		cancel:    cancel,
		mutex:     m,
		guard:     m.cfg.drift() / 2,
		heapIndex: -1,
	}
	h.held = heldContext{Context: inner, h: h}
	m.mu.Lock()
	m.held = h
	m.mu.Unlock()
	m.client.watchdog.watch(h)
	return &h.held
}

// heldContext is the context LockContext returns. Its Err also looks at the
// lock's validity: once the validity has ended, Err is not nil even if the
// expiry timer has not fired yet, as happens to a process that wakes from a
// pause longer than the validity. Done still waits for the timer.
type heldContext struct {
	context.Context
	h *holding
}

func (c *heldContext) Err() error {
	if err := c.Context.Err(); err != nil || !c.h.overdue() {
		return err
	}
	c.h.mutex.expire()
	return c.Context.Err()
}

// overdue reports whether h is still held though its validity has ended, or
// is about to: its expiry timer should have fired.
func (h *holding) overdue() bool {
	m := h.mutex
	m.mu.Lock()
	defer m.mu.Unlock()
	return !h.stopped && h.lost == nil && !time.Now().Before(h.until.Add(-h.guard))
}

// UnlockContext releases the lock: it stops the watchdog, ends the held
// context, and deletes the key on every node where this holder still owns it.
// It returns once a quorum of nodes has confirmed or every node has answered or
// timed out; calls to slower nodes finish in the background. The Mutex is
// unlocked locally whatever the result. It returns ErrNotHeld if the Mutex is
// not locked, an error wrapping ErrLockLost if the lock had been lost or a
// quorum of nodes no longer held it, and otherwise the node errors that kept a
// quorum from confirming. ctx bounds only the wait for the nodes' answers.
func (m *Mutex) UnlockContext(ctx context.Context) error {
	m.mu.Lock()
	h := m.held
	m.held = nil
	var lost error
	if h != nil {
		h.stopped = true
		lost = h.lost
	}
	m.mu.Unlock()
	if h == nil {
		return ErrNotHeld
	}
	defer func() { <-m.local }()
	m.client.watchdog.forget(h)
	h.cancel(nil) // no-op if the lock was lost: that cause stays

	// A grant still in flight would land after a release sent now: the
	// acquisition round releases those nodes itself once they answer. A
	// repair in flight undoes itself once it sees released.
	release := m.releaseCall(h.value, h.waiter, true)
	var skip *skipped
	if pending := h.round.handOver(release); pending != nil {
		skip = &skipped{nodes: pending, why: errReleaseOnAnswer}
	}
	h.released.Store(true)
	out := m.client.launch(ctx, m.cfg.perNodeTimeout(), release, nil, skip).wait(ctx, nil)
	m.queued.Store(out.woke())
	switch {
	case lost != nil:
		return errors.Join(lost, out.errs)
	case out.won:
		return nil
	case out.refusals > 0:
		return errors.Join(fmt.Errorf("%w: %d of %d nodes no longer held it at unlock", ErrLockLost, out.refusals, len(m.client.nodes)), out.errs)
	case out.errs != nil:
		return out.errs
	default:
		return fmt.Errorf("redlock: release confirmed by %d of %d nodes, less than a quorum", out.oks, len(m.client.nodes))
	}
}
