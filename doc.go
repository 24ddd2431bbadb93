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
//		return err // wraps ErrNotAcquired and ctx.Err()
//	}
//	defer m.Unlock()
//	return work(held) // context.Cause(held) wraps ErrLockLost if the lock is lost
//
// While the lock is held a watchdog extends it every TTL/3. If no quorum
// confirms the lock before its validity ends, or a quorum answers that the key
// is gone or owned by another, the watchdog cancels held with a cause wrapping
// ErrLockLost. A timer drives this, so it happens by the end of the validity
// even while masters hang. A lost lock is never silently re-acquired.
//
// Waiters are woken by a message the holder publishes on release, with
// polling every 50–100ms (WithRetryDelay, WithRetryJitter) as the fallback for
// lost messages.
//
// # What Redlock does not promise
//
// Redlock is safe only under timing assumptions: clocks on the masters drift by
// a bounded rate, and the holder's process is not paused for longer than the
// validity left. A process paused by garbage collection, swapping or SIGSTOP
// cannot react to held being cancelled, and may write to the protected
// resource after its lock has expired and another process took it. Where that
// matters, the resource itself must reject stale holders, for example with
// fencing tokens.
//
// A master that crashes and restarts without persistence forgets the locks it
// granted, which can let a second holder win a quorum. Such a master must stay
// down for longer than the largest TTL in use before it rejoins (the spec's
// delayed restart), or run with AOF and appendfsync always.
//
// Each Client option also has a per-Mutex form: options given to New are the
// defaults, and those given to NewMutex override them.
package redlock
