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
	kind   mutexKind
	spec   leaseSpec // of every lease of the Mutex; its kind is &kind
	retry  retryPolicy

	// local is the process-local lock: a token in it means a goroutine of
	// this process holds or is acquiring the remote lock.
	local chan struct{}
	// current is the lease from a successful acquisition until Unlock.
	current atomic.Pointer[lease]
	// queued is set when this Mutex's last release woke a queued waiter:
	// its next Lock then queues behind it instead of trying first, so that
	// a releaser does not snatch the lock back from the waiter it woke.
	queued atomic.Bool
}

// NewMutex returns a Mutex for the lock called name. The options override the
// Client's for this Mutex. An empty name, a name with a brace (which would
// break the key's hash tag; WithExactKey allows it) or an invalid option is
// reported by every call on the Mutex: LockContext, TryLockContext and
// UnlockContext return the error and Lock and Unlock panic with it. NewMutex
// does not contact Redis.
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
		kind:   newMutexKind(c, key, &cfg),
		cfg:    cfg,
		err:    err,
		retry:  newRetryPolicy(&cfg),
		local:  make(chan struct{}, 1),
	}
	m.spec = cfg.leaseSpec(c, &m.kind, KindMutex, name)
	return m
}

// leaseSpec is the spec of the leases of a lock of the given kind and name
// with this configuration; of is the public kind its events name.
func (c *config) leaseSpec(client *Client, kind leaseKind, of Kind, name string) leaseSpec {
	return leaseSpec{
		client:      client,
		kind:        kind,
		name:        name,
		ttl:         c.ttl,
		drift:       c.drift(),
		interval:    c.extendInterval(),
		nodeTimeout: c.perNodeTimeout(),
		maxHold:     c.maxHold,
		repair:      !c.noRepair,
		logger:      c.logger,
		events:      events{observer: c.observer, logger: c.logger, kind: of, name: name},
	}
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
	if l := m.current.Load(); l != nil {
		until, _ := l.validity()
		return until
	}
	return time.Time{}
}

// Token returns the fencing token of the current acquisition: larger than the
// token of every earlier holder of the lock, so that a resource that remembers
// the largest token it has seen can reject a stale holder. It is 0 when the
// lock is not held or was lost, and always without WithFencing.
func (m *Mutex) Token() uint64 {
	if l := m.current.Load(); l != nil {
		_, token := l.validity()
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
	return m.acquire(ctx, waitCtx, false)
}

// TryLockContext makes one attempt to acquire the lock, bounded by ctx and the
// node timeout; while fewer than a quorum of the Client's nodes are shown
// to be servers of their own (until the Client's first check has
// answered), the attempt first waits for that check, for up to another node
// timeout.
// If the attempt fails, its error wraps ErrTaken when another
// owner holds the lock on some node (or another goroutine of this process
// holds the Mutex), ErrNoQuorum with the node errors when some nodes failed
// or did not answer in time, or both; and ctx.Err() if ctx ended. On
// success, held is as for LockContext. It panics if ctx is nil.
func (m *Mutex) TryLockContext(ctx context.Context) (held context.Context, err error) {
	mustContext(ctx)
	return m.acquire(ctx, ctx, true)
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
// the end of waitCtx: the caller adds that. On failure the lease releases
// the nodes that may have granted the lock, and attempt reports whether the
// failure is permanent. m.local is held.
func (m *Mutex) attempt(waitCtx, ctx context.Context, waiter string) (held context.Context, permanent bool, err error) {
	return m.attemptFenced(waitCtx, ctx, waiter, m.kind.fence)
}

// attemptFenced is attempt, with fence as the call that records a won
// lease's token on a node (an Election's also records its leader).
func (m *Mutex) attemptFenced(waitCtx, ctx context.Context, waiter string, fence func(value string, token uint64) nodeCall[none]) (held context.Context, permanent bool, err error) {
	if waitCtx.Err() != nil {
		return nil, false, ErrNotAcquired // no attempt: the caller says why
	}
	c := m.client
	if permanent, err := c.identify(waitCtx, m.spec.nodeTimeout); err != nil {
		return nil, permanent, err
	}
	l := newLease(&m.spec, waiter)
	out := l.acquire(waitCtx)
	until := m.spec.validityEnd(l.start)
	var token uint64
	var fenceErr error
	if out.won && m.cfg.fencing {
		// Record the token on a quorum before reporting the lock held, so
		// that every later holder reads a larger counter: any two quorums
		// share a node.
		token = fencingToken(out)
		fenced := fanOut(c, waitCtx, m.spec.nodeTimeout, fence(l.value, token))
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
		held := l.hold(ctx, until, token)
		m.current.Store(l)
		return held, false, nil
	}
	l.abandon()
	switch {
	case fenceErr != nil:
		return nil, false, fenceErr
	case out.won:
		return nil, false, fmt.Errorf("%w: acquisition took longer than the TTL allows", ErrNoQuorum)
	}
	permanent = out.permanentFailures() > len(c.nodes)-quorum(len(c.nodes))
	return nil, permanent, notAcquired(out)
}

// fencingToken is the token a won acquisition round earns: one more than
// the largest counter among the nodes that granted it.
func fencingToken(out outcome[uint64]) uint64 {
	var largest uint64
	for _, r := range out.replies {
		if r.answered && r.ok {
			largest = max(largest, r.value)
		}
	}
	return largest + 1
}

// notAcquired is the error of a lost round: its reasons, or if it has none
// (the wait ended before any node answered) ErrNotAcquired alone.
func notAcquired[R any](out outcome[R]) error {
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
// whatever the result. It returns ErrNotHeld if the Mutex is not locked, the
// configuration error of a badly made Mutex, an error wrapping ErrLockLost
// if the lock had been lost or a quorum of nodes no longer held it, and
// otherwise the node errors that kept a quorum from confirming. ctx bounds
// only the wait for the nodes' answers. It panics if ctx is nil.
func (m *Mutex) UnlockContext(ctx context.Context) error {
	mustContext(ctx)
	if m.err != nil {
		return m.err
	}
	return m.unlock(ctx, m.current.Swap(nil))
}

// unlock ends l, which the caller has taken out of m.current, for
// UnlockContext.
func (m *Mutex) unlock(ctx context.Context, l *lease) error {
	if l == nil {
		return ErrNotHeld
	}
	defer func() { <-m.local }()
	out, err := l.release(ctx)
	m.queued.Store(woke(out))
	return err
}

// woke reports whether any node of a release woke a queued waiter.
func woke(out outcome[releaseReport]) bool {
	for _, r := range out.replies {
		if r.answered && r.value.woke {
			return true
		}
	}
	return false
}
