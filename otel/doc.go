// Package redlockotel reports the locks of package redlock to OpenTelemetry:
// NewObserver returns a redlock.Observer that records metrics and spans, to
// give to redlock.New, redlock.Dial or Client.NewMutex with
// redlock.WithObserver.
//
//	obs, err := redlockotel.NewObserver()
//	if err != nil {
//		return err
//	}
//	client, err := redlock.Dial(urls, redlock.WithObserver(obs))
//
// It is a module of its own, so that redlock itself does not depend on
// OpenTelemetry.
//
// # Metrics
//
// Durations are in seconds; the histograms advise bucket boundaries from
// 0.5ms to 300s, which an SDK View can replace. Every metric of a lock, and
// every span, carries redlock.kind: mutex for a Mutex's acquisitions,
// semaphore for a Semaphore's permits (Acquire, TryAcquire, Do and
// Permit.Release count as a Mutex's acquiring calls and Unlock do).
// redlock.node.errors does not: the nodes serve every kind.
//
//   - redlock.acquire.duration, a histogram: how long each acquiring call
//     (Lock, LockContext, TryLock, TryLockContext, Do) took, waiting
//     included. Attribute redlock.outcome: acquired; otherwise, from the
//     call's error, no_quorum (ErrNoQuorum: nodes failed or did not answer),
//     taken (ErrTaken: another owner holds the lock), canceled (the context
//     ended, with neither of those reasons), or error (anything else, such
//     as a closed Client).
//   - redlock.hold.duration, a histogram: how long each acquisition was
//     held. Attribute redlock.outcome: released, recorded at Unlock; or
//     lost, recorded when the loss is found, which measures the hold up to
//     the loss, not up to a later Unlock.
//   - redlock.extend.duration, a histogram: how long each lock's part of
//     an extension round took to be decided. Attribute redlock.outcome: ok,
//     refused (the lock is lost) or failed (too few nodes answered; the
//     watchdog retries).
//   - redlock.lost, a counter: locks lost while held. Attribute
//     redlock.cause: deadline, refused, max_hold, closed or disowned, as
//     redlock.LossCause names them. A release refused by a quorum (the key
//     was gone, unnoticed until Unlock) counts as refused.
//   - redlock.node.errors, a counter: calls to a node that failed or did not
//     answer in time. Attribute server.address: the node's address, left out
//     where it is unknown.
//   - redlock.held, an up-down counter: the locks held now. It goes up at
//     each acquisition and down once at its end, its loss or its release.
//
// With WithLockName, every metric but redlock.node.errors also carries
// redlock.name, the Mutex's or the Semaphore's name.
//
// # Spans
//
//   - redlock.acquire: an acquiring call, from its start to its end, child
//     of the span in the call's context. Attributes redlock.kind, redlock.name,
//     redlock.attempts (acquisition rounds made), redlock.outcome as above,
//     and redlock.token with WithFencing. On failure its status is Error,
//     with the call's error.
//   - redlock.release: a release by Unlock, UnlockContext or Do, child of
//     the span in the call's context (Unlock has none). Attributes
//     redlock.kind, redlock.name and redlock.outcome (released or lost); its status is
//     Error if the release returned an error.
//
// The spans are made when the call ends, backdated to its start, so the
// work in the critical section and the Redis commands of the acquisition
// are not their children.
//
// The core reports a loss on the goroutine that found it, after the held
// context has ended: a holder that sees held end and reads the metrics at
// once may not find the loss counted yet.
package redlockotel
