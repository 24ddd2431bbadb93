package redlock

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
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
	key    string // prefix + "{" + name + "}", so that the lock's keys share a hash slot; or the name, with WithExactKey
	cfg    config
	err    error // bad configuration, reported by every call
	args   mutexArgs

	// local is the process-local lock: a token in it means a goroutine of
	// this process holds or is acquiring the remote lock.
	local chan struct{}
	// current is the holding from a successful acquisition until Unlock.
	current atomic.Pointer[holding]
	// expiry is the expiry timer of the Mutex's holdings, which come one at
	// a time: each arms it for itself, under its own lock, after naming
	// itself in expiring, whose expire it calls. Reusing one timer saves two
	// allocations per acquisition.
	expiry   *time.Timer
	expiring atomic.Pointer[holding]
	// queued is set when this Mutex's last release woke a queued waiter:
	// its next Lock then queues behind it instead of trying first, so that
	// a releaser does not snatch the lock back from the waiter it woke.
	queued atomic.Bool
}

// NewMutex returns a Mutex for the lock called name. The options override the
// Client's for this Mutex. An empty name, a name with a brace (which would
// break the key's hash tag; WithExactKey allows it) or an invalid option is
// reported by every call on the Mutex: LockContext, TryLockContext and
// UnlockContext return the error and Lock panics with it. NewMutex does not
// contact Redis.
func (c *Client) NewMutex(name string, opts ...Option) *Mutex {
	cfg := c.cfg
	cfg.errs = nil
	cfg.apply(opts)
	err := cfg.validate()
	key := cfg.keyPrefix + "{" + name + "}"
	switch {
	case name == "":
		err = errors.Join(errors.New("redlock: mutex name is empty"), err)
	case cfg.exactKey && c.sharded && !hasHashTag(name):
		err = errors.Join(fmt.Errorf("redlock: mutex name %q has no hash tag: on a Redis Cluster, WithExactKey needs one, such as \"{%s}\", so that the lock's other keys share its slot", name, name), err)
	case cfg.exactKey:
		key = name
	case strings.ContainsAny(name, "{}"):
		err = errors.Join(fmt.Errorf("redlock: mutex name %q has a brace, which would break the hash tag of its keys; WithExactKey takes the name as it is", name), err)
	}
	m := &Mutex{
		client: c,
		name:   name,
		key:    key,
		args:   newMutexArgs(key, cfg.ttl),
		cfg:    cfg,
		err:    err,
		local:  make(chan struct{}, 1),
	}
	m.expiry = time.AfterFunc(time.Hour, func() { m.expiring.Load().expire() })
	m.expiry.Stop()
	return m
}

// hasHashTag reports whether key has a Redis Cluster hash tag: a non-empty
// part between the first "{" and the first "}" after it, which alone is
// hashed, so that the key and the key plus any suffix share a slot.
func hasHashTag(key string) bool {
	_, rest, found := strings.Cut(key, "{")
	if !found {
		return false
	}
	tag, _, found := strings.Cut(rest, "}")
	return found && tag != ""
}

// Name returns the name the Mutex was made with.
func (m *Mutex) Name() string { return m.name }

// Until returns the end of the lock's validity: until then no other holder can
// acquire it, assuming bounded clock drift. It is the zero time when the lock
// is not held or was lost. The watchdog moves it forward while the lock is held.
func (m *Mutex) Until() time.Time {
	if h := m.current.Load(); h != nil {
		until, _ := h.validity()
		return until
	}
	return time.Time{}
}

// Token returns the fencing token of the current acquisition: larger than the
// token of every earlier holder of the lock, so that a resource that remembers
// the largest token it has seen can reject a stale holder. It is 0 when the
// lock is not held or was lost, and always without WithFencing.
func (m *Mutex) Token() uint64 {
	if h := m.current.Load(); h != nil {
		_, token := h.validity()
		return token
	}
	return 0
}

// LockContext acquires the lock, waiting until it is free or ctx is done.
// It returns held, a context derived from ctx that ends when ctx ends, when
// Unlock is called, or when the lock is lost; in the last case
// context.Cause(held) wraps ErrLockLost. If ctx ends first, the error wraps
// ErrNotAcquired, ctx.Err(), and the reasons of the last attempt (ErrTaken,
// ErrNoQuorum). Transient node failures are retried; an error
// that retrying cannot fix on enough nodes to rule out a quorum (an ACL denial,
// a closed client) is returned at once. With WithWaitTimeout the wait also
// ends after that long, while held stays bounded by ctx alone. When ctx ends
// after the lock is acquired, the lock stays held until Unlock. held.Err()
// and held.Done() also check the lock's validity themselves, so they report
// the loss even where its timer is late (a process that has just woken from a
// long pause): check held before each step of work that must not outlive the
// lock. LockContext panics if ctx is nil.
func (m *Mutex) LockContext(ctx context.Context) (held context.Context, err error) {
	mustContext(ctx)
	waitCtx := ctx
	if m.cfg.waitTimeout > 0 {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, m.cfg.waitTimeout)
		defer cancel()
	}
	return m.lock(ctx, waitCtx)
}

// TryLockContext makes one attempt to acquire the lock, bounded by ctx and the
// node timeout. If the attempt fails, its error wraps ErrTaken when another
// owner holds the lock on some node (or another goroutine of this process
// holds the Mutex), ErrNoQuorum with the node errors when some nodes failed
// or did not answer in time, or both; and ctx.Err() if ctx ended. On
// success, held is as for LockContext. It panics if ctx is nil.
func (m *Mutex) TryLockContext(ctx context.Context) (held context.Context, err error) {
	mustContext(ctx)
	if m.cfg.observer == nil {
		held, _, err := m.try(ctx, time.Time{})
		return held, err
	}
	start := time.Now()
	held, attempts, err := m.try(ctx, start)
	if err != nil {
		m.observeAcquisition(ctx, start, attempts, err)
	}
	return held, err
}

// try is TryLockContext, which began at start: it tells the observer of an
// acquisition before the Client can close, and leaves a failure to
// TryLockContext. It also says whether it made an attempt.
func (m *Mutex) try(ctx context.Context, start time.Time) (held context.Context, attempts int, err error) {
	if err := m.usable(); err != nil {
		return nil, 0, err
	}
	if ctx.Err() != nil {
		return nil, 0, waitEnded(ctx, nil)
	}
	select {
	case m.local <- struct{}{}:
	default:
		return nil, 0, errTakenHere
	}
	if !m.client.enter() {
		<-m.local
		return nil, 0, ErrClosed
	}
	defer m.client.leave()
	held, _, err = m.attempt(ctx, ctx, "")
	if err != nil {
		<-m.local
		if ctx.Err() != nil {
			err = waitEnded(ctx, err)
		}
		return nil, 1, err
	}
	if m.cfg.observer != nil {
		m.observeAcquisition(ctx, start, 1, nil)
	}
	return held, 1, nil
}

// observeAcquisition tells the observer, which is set, how an acquiring
// call that began at start ended.
func (m *Mutex) observeAcquisition(ctx context.Context, start time.Time, attempts int, err error) {
	o := m.cfg.observer
	switch {
	case err == nil:
		m.current.Load().announce(func() {
			if o.Acquired != nil {
				observe(m.cfg.logger, "Acquired", o.Acquired, AcquiredEvent{Context: ctx, Name: m.name, Start: start, Wait: time.Since(start), Attempts: attempts, Token: m.Token()})
			}
		})
	case o.NotAcquired != nil:
		observe(m.cfg.logger, "NotAcquired", o.NotAcquired, NotAcquiredEvent{Context: ctx, Name: m.name, Start: start, Wait: time.Since(start), Attempts: attempts, Err: err})
	}
}

// mustContext panics, as the standard library does, on a nil context: it
// would otherwise fail far from the call, in a node's goroutine.
func mustContext(ctx context.Context) {
	if ctx == nil {
		panic("redlock: nil Context")
	}
}

// usable reports bad configuration or a closed Client.
func (m *Mutex) usable() error {
	if m.err != nil {
		return m.err
	}
	if m.client.isClosing() {
		return ErrClosed
	}
	return nil
}

// valuePrefix starts every holder's value this package makes, so that a
// waiter can tell a holder whose release will wake it from a holder of
// another Redlock client, which will not.
const valuePrefix = "rl:"

// valueEncoding writes a value's random bits as rand.Text does.
var valueEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newValue returns a fresh holder's value: valuePrefix, then 128 bits from
// crypto/rand, made with one allocation.
func newValue() string {
	var random [16]byte
	rand.Read(random[:])
	var value [len(valuePrefix) + 26]byte
	copy(value[:], valuePrefix)
	valueEncoding.Encode(value[len(valuePrefix):], random[:])
	return string(value[:])
}

// attempt makes one acquisition round, waiting for it no longer than waitCtx
// allows; held derives from ctx. Its error names the round's reasons, not
// the end of waitCtx: the caller adds that. On failure the holding releases
// the nodes that may have granted the lock, and attempt reports whether the
// failure is permanent. m.local is held.
func (m *Mutex) attempt(waitCtx, ctx context.Context, waiter string) (held context.Context, permanent bool, err error) {
	if waitCtx.Err() != nil {
		return nil, false, ErrNotAcquired // no attempt: the caller says why
	}
	c := m.client
	unknown, permanent, err := c.identify(waitCtx)
	if err != nil {
		return nil, permanent, err
	}
	h := m.newHolding(waiter)
	out := h.acquire(waitCtx, unknown)
	until := validityEnd(h.start, m.cfg.ttl, m.cfg.drift())
	var token uint64
	var fenceErr error
	if out.won && m.cfg.fencing {
		// Record the token on a quorum before reporting the lock held, so
		// that every later holder reads a larger counter: any two quorums
		// share a node.
		token = out.token()
		fenced := c.fanOut(waitCtx, m.cfg.perNodeTimeout(), m.fenceCall(h.value, token))
		if !fenced.won {
			// A node that refuses no longer has the grant (it expired, or
			// the node restarted): the quorum did not hold.
			fenceErr = fmt.Errorf("%w: fencing token %d reached %d of %d nodes, %d of which no longer had the grant", ErrNoQuorum, token, fenced.oks, len(c.nodes), fenced.refusals)
			if fenced.errs != nil {
				fenceErr = fmt.Errorf("%w: %w", fenceErr, fenced.errs)
			}
		}
	}
	if out.won && fenceErr == nil && time.Now().Before(until) {
		held := h.hold(ctx, until, token)
		m.current.Store(h)
		return held, false, nil
	}
	h.abandon()
	switch {
	case fenceErr != nil:
		return nil, false, fenceErr
	case out.won:
		return nil, false, fmt.Errorf("%w: acquisition took longer than the TTL allows", ErrNoQuorum)
	}
	permanent = out.permanentFailures() > len(c.nodes)-quorum(len(c.nodes))
	return nil, permanent, notAcquired(out)
}

// notAcquired is the error of a lost round: its reasons, or if it has none
// (the wait ended before any node answered) ErrNotAcquired alone.
func notAcquired(out outcome) error {
	if err := out.notAcquired(); err != nil {
		return err
	}
	return ErrNotAcquired
}

// UnlockContext releases the lock: it stops the watchdog, ends the held
// context, waits for any extension or repair in flight, and deletes the key
// on every node where this holder still owns it. It returns once a quorum of
// nodes has confirmed, or a quorum has said that the key was gone, or
// neither can happen any more, and at the latest after the node timeout;
// calls to slower nodes finish in the background. The Mutex is unlocked locally
// whatever the result. It returns ErrNotHeld if the Mutex is not locked, an
// error wrapping ErrLockLost if the lock had been lost or a quorum of nodes
// no longer held it, and otherwise the node errors that kept a quorum from
// confirming. ctx bounds only the wait for the nodes' answers. It panics if
// ctx is nil.
func (m *Mutex) UnlockContext(ctx context.Context) error {
	mustContext(ctx)
	if m.err != nil {
		return m.err
	}
	return m.unlock(ctx, m.current.Swap(nil))
}

// unlock ends h, which the caller has taken out of m.current, for
// UnlockContext.
func (m *Mutex) unlock(ctx context.Context, h *holding) error {
	if h == nil {
		return ErrNotHeld
	}
	defer func() { <-m.local }()
	var start time.Time
	if m.cfg.observer != nil {
		start = time.Now()
	}
	out, lost := h.unlock(ctx)
	m.queued.Store(out.woke())
	err := m.unlockError(out, lost)
	foundLost := lost == nil && !out.won && out.refusals >= quorum(len(m.client.nodes))
	if foundLost {
		h.lostAtRelease(err)
	}
	if o := m.cfg.observer; o != nil {
		h.observing.Wait() // a Lost event comes before the Released
		if foundLost && o.Lost != nil {
			observe(m.cfg.logger, "Lost", o.Lost, LostEvent{Name: m.name, Cause: LostRefused, Held: start.Sub(h.heldAt), Err: err})
		}
		if o.Released != nil {
			observe(m.cfg.logger, "Released", o.Released, ReleasedEvent{Context: ctx, Name: m.name, Start: start, Duration: time.Since(start),
				Held: start.Sub(h.heldAt), Lost: lost != nil || foundLost, Err: err})
		}
	}
	return err
}

// unlockError is UnlockContext's error, given what the release learned and
// the cause of the loss, if the lock had been lost.
func (m *Mutex) unlockError(out outcome, lost error) error {
	nodes := len(m.client.nodes)
	switch {
	case lost != nil:
		return errors.Join(lost, out.errs)
	case out.won:
		return nil
	case out.refusals >= quorum(nodes):
		return errors.Join(fmt.Errorf("%w: %d of %d nodes no longer held it at unlock", ErrLockLost, out.refusals, nodes), out.errs)
	default:
		return errors.Join(fmt.Errorf("redlock: release confirmed by %d of %d nodes, less than a quorum; %d no longer held it", out.oks, nodes, out.refusals), out.errs)
	}
}
