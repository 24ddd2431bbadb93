// Package redlock is a distributed mutex over N independent Redis masters,
// after the Redlock algorithm of redis.io's "Distributed Locks with Redis".
//
// A lock is held when a majority of the masters (the quorum, N/2+1) grant it
// within its validity time: TTL − elapsed − drift, where drift is
// TTL×0.01 + 2ms and elapsed is read from the monotonic clock. Every
// acquisition uses a fresh 128-bit random value, so only its holder can extend
// or release it. Requests go to all masters at once; a round ends as soon as
// the quorum is won or can no longer be won, and never waits for a slow master
// beyond the per-node timeout.
//
// # Using it
//
// Make one Client per set of masters, with New or Dial, and one Mutex per lock
// name with Client.NewMutex. A *Mutex is a sync.Locker: Lock, Unlock and
// TryLock behave like those of sync.Mutex, across processes. LockContext
// returns a context, held, that ends when the lock is lost, so work scoped to
// it stops in time:
//
//	held, err := m.LockContext(ctx)
//	if err != nil {
//		return err // wraps ErrNotAcquired, ctx.Err() and why: ErrTaken, ErrNoQuorum
//	}
//	defer m.Unlock()
//	return work(held) // context.Cause(held) wraps ErrLockLost if the lock is lost
//
// While the lock is held a watchdog extends it every TTL/3, counted from the
// start of the acquisition round. If no quorum confirms the lock before its
// validity ends, or a quorum answers that the key is gone or owned by
// another, the lock is lost: held ends with a cause wrapping ErrLockLost, and
// the key is released on every master. A timer drives this, so it happens by
// the end of the validity even while masters hang; held.Err() and
// held.Done() also check the validity themselves, for a process that wakes
// from a pause before that timer has fired. A lost lock is never silently
// re-acquired, and once it is lost or Unlock has begun, nothing extends it or
// writes its key again. While a quorum confirms the lock, the watchdog sets
// the key again (SET NX, for no longer than the confirmed validity) on
// masters that lost it, say by a restart, so that one more failure does not
// cost the lock. One watchdog per Client serves all its locks: extensions
// that fall due within a quarter of an interval of each other go out
// together, early, as one script call per master for up to 256 locks.
//
// Each acquisition has one owner of its state, which moves one way:
// acquiring, held, then lost or released. Every master that may have granted
// a failed, lost or released acquisition gets a release, whenever its grant
// arrives; a command whose reply never came back is released again once its
// master has answered a command sent after it.
//
// Do scopes a critical section: it runs a func under the lock and releases
// the lock after, and its error wraps ErrLockLost whenever the lock was not
// held until the func returned. WithMaxHold caps how long the watchdog keeps
// a lock alive. A failed attempt says why: ErrTaken when another owner holds
// the key on some master, ErrNoQuorum when masters failed or did not answer,
// joined when both apply. Status reads a lock without taking it. With
// WithExactKey the name is the key, so that redsync, node-redlock and the
// Python redlock exclude, and are excluded by, a Mutex on the same name.
//
// WithObserver reports each lock's events (acquired, not acquired, released,
// extended, lost with its cause, and node errors) to optional funcs, which
// cost nothing when unset; the nested module
// github.com/seed62cefe0a/redlock/otel turns them into OpenTelemetry
// metrics and spans. Logs go to a *slog.Logger (WithLogger).
//
// A waiter that fails its first attempt joins the lock's queue on every
// master. A release wakes the waiter at the head of the queue by publishing
// its id on its Client's own channel, so one release costs one new attempt
// and reaches one process, not every waiter. Polling is the fallback for lost
// messages and holders that died: every 50–100ms (WithRetryDelay,
// WithRetryJitter) while a waiter is not queued, ten times less often while
// it is queued behind a holder of this package, whose release will wake it.
//
// # What Redlock does not promise
//
// Redlock is safe only under timing assumptions: clocks on the masters drift by
// a bounded rate, and the holder's process is not paused for longer than the
// validity left. A process paused by garbage collection, swapping or SIGSTOP
// cannot react to held being cancelled, and may write to the protected
// resource after its lock has expired and another process took it. Where that
// matters, the resource itself must reject stale holders: see fencing tokens
// below.
//
// A master that crashes and restarts without persistence forgets the locks it
// granted, which can let a second holder win a quorum. Such a master must stay
// down for longer than the largest TTL in use before it rejoins (the spec's
// delayed restart), or run with AOF and appendfsync always. WithRestartGuard
// enforces the delay from the client side: a master whose uptime (from INFO)
// is below the guard does not count toward an acquisition's quorum.
//
// # Fencing tokens
//
// With WithFencing, every acquisition earns a token, Mutex.Token, larger than
// the token of every earlier holder of the lock. Each master keeps a counter
// per lock, in the key's hash slot. An acquisition reads the counter of every
// master that grants it and takes one more than the largest; before the lock
// is reported held, it sets the counter to at least the token on a quorum of
// masters, and only on masters where it still holds the key.
//
// Why the tokens increase: let holder A record token a on a quorum W, and let
// a later holder B be granted by a quorum G. Two majorities of the same N
// masters share at least one master m. A recorded a on m while m held A's key.
// B's grant on m came when m did not hold A's key: either before A's grant on
// m, which would make B the earlier holder, or after A's key left m, and so
// after A's record. The acquisition script reads the counter in the same
// atomic step as the grant, so B read at least a on m, and its token is at
// least a+1. This holds whether A released the lock or lost it by expiry.
//
// The argument assumes that a master never loses a counter it recorded and
// that scripts run atomically, as they do in Redis. A master that restarts
// without persistence forgets its counters; the restart guard protects the
// lock key from this, but not the counters, since a forgotten counter stays
// forgotten however long the master waits. Fencing therefore needs the masters
// to run with AOF and appendfsync always (or to be re-seeded, before they
// rejoin, with the largest counter of a quorum). The chaos suite in the
// integration folder shows tokens out of order after such a restart without
// AOF, and in order with it.
//
// Tokens have gaps: an acquisition that fails after reading counters uses no
// token. The cost of fencing is a second round to the masters on every
// acquisition, and one counter key per lock name that never expires.
//
// # Semaphores
//
// Client.NewSemaphore makes a lock that up to P holders have at once:
// Acquire waits for a permit as LockContext waits for a lock, and a
// Permit's Context ends before its lease could expire, as held does. A
// counter per master, incremented on a quorum, would not be exact: with 3
// masters and 2 permits, holders on masters 1+2, 2+3 and 1+3 each win a
// quorum while every master counts 2. A Semaphore is instead P mutexes.
//
// What each master stores: for a Semaphore of P permits, P slot keys, slot
// I holding the value of the one holder that set it there with SET NX PX
// (or nothing), and the limit P, which the grant script sets and checks in
// the same atomic step as the grant; all in the name's hash slot.
//
// What a holder needs: a permit is a lease on one slot I, granted by a
// quorum of masters, within its validity, exactly as a Mutex's lock is
// granted on its key, and extended, repaired and released as a lock is, on
// the key of slot I; its extensions and repairs also renew the limit.
//
// Why no interleaving gives one holder too many: two leases held at once
// on the same slot would need two quorums of masters that each hold the
// slot's key with their own value; two majorities of the same N masters
// share at least one master, which holds one value at a time. That is
// Redlock's mutual exclusion, for each slot alone, under its assumptions
// (bounded drift and pauses, masters that do not forget a key). So each
// slot has at most one holder at any moment, and the P slots at most P.
// Grants on different slots never count together: a holder's quorum is a
// quorum for one slot, so the split above gives the third holder no slot
// free on two masters. The bound holds with any minority of masters down,
// since a lease needs only a quorum. Every process must use the same P: a
// grant on a master whose limit differs is refused, and an attempt that
// hears such a refusal before it is decided fails with ErrPermitsMismatch,
// even if the other masters granted it; a refusal heard after a quorum
// granted ends the permit, whose Context's cause wraps ErrPermitsMismatch,
// and releases its slot. Two numbers cannot both hold
// permits while the limit lives, since each needs a quorum that stores its
// own. The limit lives for a day after the last grant, extension or
// repair of a slot on each master, so that a name no longer used leaves
// nothing behind, while a permit held for longer than a day keeps it, and
// a user with another number is still turned away.
//
// An attempt asks for a slot drawn at random. A master that refuses
// reports which of the 64 slots from it on are free there, so that a failed
// attempt asks at once for a slot free on a quorum; past that window, a
// Semaphore of more permits reads every slot; it asks for up to P slots so.
// When every slot looks taken, rivals that are about to lose may have them:
// the attempt pauses for about as long as its round took, reads every slot,
// and asks once more. ErrTaken means that no quorum reported one free. Waiters queue in the Semaphore's one queue and
// are woken, in order, by the releases of any of its permits.
//
// # Elections
//
// Client.NewElection makes an Election: candidates Campaign, one leads at a
// time, and Observe reports who. What each master stores: the election's
// lock key, holding the value of the leader's lease; its fencing counter;
// and the leader's record, "term:proclamation:holder" and the value, which
// the script that raises the counter writes in the same atomic step, only
// while the holder owns the lock key there, and which expires, is extended
// and is deleted with the lock key.
//
// One leader: a term is a lease on the lock key, so two terms live at once
// would need two quorums that each hold the key with their own value, which
// Redlock's mutual exclusion rules out as for a Mutex. Terms that fence: a
// term's number is a fencing token of the election's lock, so the argument
// above makes each term's number larger than every earlier term's, with the
// same assumption about masters that do not forget their counters. Leader
// reads the lock key and the record from a quorum: a holder that a quorum
// reports, with the record of its highest proclamation; a node that fails
// to answer counts as one that may hold the term, so that "nobody leads" is
// said only when the nodes read rule out every holder.
//
// Each Client option also has a per-Mutex form: options given to New are the
// defaults, and those given to NewMutex override them.
package redlock
