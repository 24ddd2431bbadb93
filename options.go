package redlock

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Option configures a Client or a Mutex. Options given to New or Dial are the
// defaults of every Mutex the Client makes; options given to NewMutex
// override them for that Mutex.
type Option func(*config)

// Defaults of the options.
const (
	DefaultTTL         = 8 * time.Second
	DefaultDriftFactor = 0.01
	DefaultRetryDelay  = 50 * time.Millisecond
	DefaultRetryJitter = 50 * time.Millisecond
	DefaultKeyPrefix   = "redlock:"

	// maxNodeTimeout caps the default per-node timeout for long TTLs.
	maxNodeTimeout = 500 * time.Millisecond
	// driftFloor is the spec's fixed 2ms of drift, added to ttl×factor.
	driftFloor = 2 * time.Millisecond
)

type config struct {
	ttl              time.Duration
	driftFactor      float64
	nodeTimeout      time.Duration // 0: min(ttl/10, 500ms)
	watchdogInterval time.Duration // 0: ttl/3
	retryDelay       time.Duration
	retryJitter      time.Duration
	waitTimeout      time.Duration // 0: LockContext waits until ctx is done
	maxHold          time.Duration // 0: extended until Unlock
	keyPrefix        string
	exactKey         bool // the name is the key
	fencing          bool
	restartGuard     time.Duration // 0: off
	logger           *slog.Logger
	observer         *Observer // nil: none
	noRepair         bool      // the watchdog does not repair; only tests set it
	errs             []error
}

func defaultConfig() config {
	return config{
		ttl:         DefaultTTL,
		driftFactor: DefaultDriftFactor,
		retryDelay:  DefaultRetryDelay,
		retryJitter: DefaultRetryJitter,
		keyPrefix:   DefaultKeyPrefix,
		logger:      slog.Default(),
	}
}

func (c *config) apply(opts []Option) {
	for _, opt := range opts {
		if opt != nil {
			opt(c)
		}
	}
}

func (c *config) fail(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("redlock: "+format, args...))
}

// WithTTL sets how long a lock lives on each node without being extended. The
// watchdog extends it while the lock is held, so the TTL bounds how long a
// crashed holder blocks others. Default 8s. It must be a whole number of
// milliseconds, and drift plus one per-node timeout must leave at least half
// of it as validity.
func WithTTL(ttl time.Duration) Option {
	return func(c *config) {
		if ttl <= 0 || ttl%time.Millisecond != 0 {
			c.fail("TTL %v must be a positive whole number of milliseconds", ttl)
			return
		}
		c.ttl = ttl
	}
}

// WithDriftFactor sets the clock drift allowed for, as a fraction of the TTL;
// the drift subtracted from the validity is ttl×factor + 2ms. Default 0.01.
// Valid range [0, 0.5).
func WithDriftFactor(factor float64) Option {
	return func(c *config) {
		if !(factor >= 0 && factor < 0.5) {
			c.fail("drift factor %v is outside [0, 0.5)", factor)
			return
		}
		c.driftFactor = factor
	}
}

// WithNodeTimeout bounds each call to one node. A node that does not answer in
// time counts as failed for that round; the call itself may finish later in
// the background, owned by the Client. Default min(TTL/10, 500ms). It must be
// positive, and drift plus the node timeout must leave at least half the TTL.
func WithNodeTimeout(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.fail("node timeout %v must be positive", d)
			return
		}
		c.nodeTimeout = d
	}
}

// WithWatchdogInterval sets how often the watchdog extends a held lock.
// Default TTL/3. It must be positive and at most half the TTL, so that a
// failed extension can be retried before the lock expires.
func WithWatchdogInterval(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.fail("watchdog interval %v must be positive", d)
			return
		}
		c.watchdogInterval = d
	}
}

// WithRetryDelay sets the base delay between acquisition attempts while the
// lock is taken. A waiter queued behind a holder of this package is woken by
// name when the release makes it the next in line, and waits ten times as
// long between attempts, since then the delay matters only when that message
// is lost or the holder has died; behind a holder of another Redlock client
// (see WithExactKey), which wakes no one, it waits one delay. Default 50ms;
// it must be positive.
func WithRetryDelay(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.fail("retry delay %v must be positive", d)
			return
		}
		c.retryDelay = d
	}
}

// WithRetryJitter sets the upper bound of a random delay added to each retry
// delay, so that waiters do not retry in step. Default 50ms; it must not be
// negative.
func WithRetryJitter(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.fail("retry jitter %v must not be negative", d)
			return
		}
		c.retryJitter = d
	}
}

// WithWaitTimeout bounds how long LockContext waits for the lock, separately
// from the context it is given: the wait ends with an error wrapping
// ErrNotAcquired and context.DeadlineExceeded, while the held context it
// returns on success is bounded only by that context. This is how to wait
// a bounded time for a lock and then hold it for as long as needed. Default 0,
// which means no bound beyond the context. Lock ignores it, since Lock always
// blocks until the lock is held. It must not be negative.
func WithWaitTimeout(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.fail("wait timeout %v must not be negative", d)
			return
		}
		c.waitTimeout = d
	}
}

// WithMaxHold bounds how long one acquisition may be held: d after the
// acquisition began, the watchdog stops extending the lock and the held
// context ends with a cause that wraps ErrLockLost and names the limit. The
// key is not deleted then, so that a holder that checks held before each
// step has the rest of the validity to stop: it expires, or is released,
// at the end of the last validity a quorum confirmed, at most d plus the
// TTL after the acquisition began, even if the holder is stuck and never
// calls Unlock. Unlock releases it at once. Default 0, no limit; it must
// not be negative.
func WithMaxHold(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.fail("maximum hold %v must not be negative", d)
			return
		}
		c.maxHold = d
	}
}

// WithKeyPrefix sets the prefix of every lock's Redis key. A Mutex named n
// uses the key prefix+"{"+n+"}", so that the keys of one lock share a cluster
// hash slot. Default "redlock:"; it may be empty, and must not contain a
// brace, which would break that hash tag.
func WithKeyPrefix(prefix string) Option {
	return func(c *config) {
		if strings.ContainsAny(prefix, "{}") {
			c.fail("key prefix %q has a brace, which would break the hash tag of the lock's keys", prefix)
			return
		}
		c.keyPrefix = prefix
	}
}

// WithExactKey makes the lock's name its Redis key, byte for byte, with no
// prefix and no braces, so that the Mutex excludes, and is excluded by, any
// other Redlock client that locks that key: redsync, node-redlock and the
// Python redlock all hold a lock as a random value set with SET NX PX and
// release it with a compare-and-delete, as this package does. The lock's
// other keys are the name plus a suffix (":waiters", ":fence"); on a Redis
// Cluster they share a hash slot with the lock only if the name has a hash
// tag of its own, such as "{orders}:lock", and a Client with a Cluster or
// Ring node reports a name without one as an error. Waiters queued here are woken by
// this package's releases only; behind a holder of another client they poll
// every retry delay. The key prefix still names the Client's own keys.
// Default off.
func WithExactKey() Option {
	return func(c *config) { c.exactKey = true }
}

// WithFencing makes every acquisition earn a fencing token, Mutex.Token: a
// number larger than that of every earlier holder of the lock, which the
// protected resource can use to reject a stale holder. It costs a second round
// to the nodes in each acquisition, to record the token on a quorum before the
// lock is reported held, and one counter key per lock name that never expires.
// Default off.
func WithFencing() Option {
	return func(c *config) { c.fencing = true }
}

// WithRestartGuard makes a node that has been up for less than d not count
// toward the quorum of an acquisition, so that a master that restarted without
// persistence, and so forgot the locks it granted, cannot help a second holder
// in. It should be at least the largest TTL in use. The node's uptime comes from
// INFO, read in the acquisition script, in whole seconds; restarts are logged.
// Default 0, off: use it when the masters run without persistence. It must not
// be negative.
func WithRestartGuard(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.fail("restart guard %v must not be negative", d)
			return
		}
		c.restartGuard = d
	}
}

// WithLogger sets the logger for events the API cannot return: node failures
// that were retried by Lock, failed releases in Unlock, lost locks. Default
// slog.Default(); nil is rejected.
func WithLogger(logger *slog.Logger) Option {
	return func(c *config) {
		if logger == nil {
			c.fail("logger must not be nil")
			return
		}
		c.logger = logger
	}
}

// drift is the clock drift allowed for over one TTL, as the Redlock spec
// gives it: ttl×factor plus 2ms for the granularity of Redis expiry.
func (c *config) drift() time.Duration {
	return time.Duration(float64(c.ttl)*c.driftFactor) + driftFloor
}

func (c *config) perNodeTimeout() time.Duration {
	if c.nodeTimeout > 0 {
		return c.nodeTimeout
	}
	return min(c.ttl/10, maxNodeTimeout)
}

func (c *config) extendInterval() time.Duration {
	if c.watchdogInterval > 0 {
		return c.watchdogInterval
	}
	return c.ttl / 3
}

// validate reports every problem with the configuration at once.
func (c *config) validate() error {
	errs := append([]error(nil), c.errs...)
	if len(errs) == 0 {
		// Half the TTL must survive drift and a round that waits for the
		// slowest node; less would leave the holder almost no time to work.
		if validity := c.ttl - c.drift() - c.perNodeTimeout(); validity < c.ttl/2 {
			errs = append(errs, fmt.Errorf("redlock: TTL %v is too small: drift %v and node timeout %v leave %v of validity, less than half the TTL", c.ttl, c.drift(), c.perNodeTimeout(), validity))
		}
		if c.extendInterval() > c.ttl/2 {
			errs = append(errs, fmt.Errorf("redlock: watchdog interval %v exceeds half the TTL %v", c.extendInterval(), c.ttl))
		}
	}
	return errors.Join(errs...)
}
