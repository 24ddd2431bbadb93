package redlock

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Observer receives the events of a Client's locks: set it with WithObserver.
// Each field is optional; a nil field costs nothing, and so does a nil
// *Observer. The zero value observes nothing.
//
// Each func is called on the goroutine where its event happens, named in
// its doc, and that goroutine waits for it. Some of them drive the lock's
// timing: the watchdog's, which extends every lock of the Client, and the
// expiry timer's. A func must therefore return quickly and must not block:
// record a metric, end a span, or hand the event to a goroutine of your own.
// It must not call methods of the Client or of its mutexes, which may wait
// for it. The events of one acquisition come in order: Acquired, then at
// most one Lost, then Released if Unlock is called. A loss that happens
// before the acquiring call has told its Acquired (a maximum hold shorter
// than the acquisition, a pause) is delivered right after the Acquired, on
// the acquiring call's goroutine. A panic in a func is recovered and
// logged at Error with the event's name, and the lock carries on as if the
// func had returned.
type Observer struct {
	// Acquired is called when Lock, LockContext, TryLock, TryLockContext or
	// Do acquires the lock, on the caller's goroutine, before the call
	// returns.
	Acquired func(AcquiredEvent)
	// NotAcquired is called when one of those calls returns without the
	// lock, on the caller's goroutine.
	NotAcquired func(NotAcquiredEvent)
	// Released is called when Unlock, UnlockContext or Do has released a
	// lock, on the caller's goroutine, whether or not the lock had been lost;
	// for a Mutex that another goroutine unlocked before the acquiring call
	// returned, on the acquiring call's, after its Acquired.
	Released func(ReleasedEvent)
	// Extended is called once per lock for each extension round, on the
	// watchdog's goroutine, when the round's outcome for that lock is known,
	// unless the lock is no longer held by then.
	Extended func(ExtendedEvent)
	// Lost is called once when a held lock is lost, on the goroutine that
	// found out: the expiry timer's, the watchdog's, Close's, or one that
	// called held.Err, held.Done or Unlock after the validity had ended,
	// or Unlock's when its release finds the key gone from a quorum of
	// nodes (LostRefused); or on the acquiring call's, after its Acquired,
	// for a loss that came first. It comes after held has ended, and before the
	// Released event of the same acquisition: Unlock waits for it.
	Lost func(LostEvent)
	// NodeError is called for each call to a node that failed or did not
	// answer in time: on that node's goroutine for the calls of a round and
	// the background releases, on the goroutine of the Client's wake-up
	// subscription to that node, or on Close's for its last releases. For a
	// node that has too many calls in flight it is called on the goroutine
	// that started the round.
	NodeError func(NodeErrorEvent)
}

// Kind is the kind of lock an event concerns. Its zero value names none.
type Kind uint8

const (
	// KindMutex: a Mutex's acquisition.
	KindMutex Kind = iota + 1
	// KindSemaphore: a permit of a Semaphore.
	KindSemaphore
	// KindElection: a term of an Election.
	KindElection
)

// String returns the kind's name in lower case: "mutex", "semaphore",
// "election".
func (k Kind) String() string {
	switch k {
	case KindMutex:
		return "mutex"
	case KindSemaphore:
		return "semaphore"
	case KindElection:
		return "election"
	}
	return "unknown"
}

// AcquiredEvent describes an acquisition: of a Mutex by Lock, LockContext,
// TryLock, TryLockContext or Do, or of a permit by a Semaphore's Acquire,
// TryAcquire or Do.
type AcquiredEvent struct {
	Context  context.Context // the context of the call; context.Background() for Lock and TryLock
	Kind     Kind            // of the lock
	Name     string          // the Mutex's or the Semaphore's name
	Start    time.Time       // when the call began
	Wait     time.Duration   // from Start to the acquisition, local wait included
	Attempts int             // acquisition rounds made
	Token    uint64          // the fencing token; 0 without WithFencing
}

// NotAcquiredEvent describes a call that returned without the lock.
type NotAcquiredEvent struct {
	Context  context.Context
	Kind     Kind
	Name     string
	Start    time.Time
	Wait     time.Duration
	Attempts int   // acquisition rounds made; 0 if none was
	Err      error // what the call returned: see ErrTaken, ErrNoQuorum
}

// ReleasedEvent describes a release by Unlock, UnlockContext, Do or a
// Permit's Release.
type ReleasedEvent struct {
	Context  context.Context // the context of the call; context.Background() for Unlock
	Kind     Kind
	Name     string
	Start    time.Time     // when the release began
	Duration time.Duration // how long the release took
	Held     time.Duration // from the acquisition to Start
	// Lost says that the lock had been lost, before the release began or
	// as the release found (a quorum of nodes no longer had the key); a
	// Lost event came first.
	Lost bool
	Err  error // what UnlockContext returned
}

// ExtendOutcome is the outcome of an extension round for one lock.
type ExtendOutcome uint8

const (
	// ExtendOK: a quorum extended the lock.
	ExtendOK ExtendOutcome = iota + 1
	// ExtendRefused: a quorum said the key is gone or another's; the lock is lost.
	ExtendRefused
	// ExtendFailed: too few nodes answered; the watchdog tries again soon.
	ExtendFailed
)

func (o ExtendOutcome) String() string {
	switch o {
	case ExtendOK:
		return "ok"
	case ExtendRefused:
		return "refused"
	case ExtendFailed:
		return "failed"
	}
	return "unknown"
}

// ExtendedEvent describes one lock's part in an extension round.
type ExtendedEvent struct {
	Kind    Kind
	Name    string
	Latency time.Duration // from the round's start to its outcome for this lock
	Outcome ExtendOutcome
}

// LossCause says why a lock was lost.
type LossCause uint8

const (
	// LostDeadline: no quorum confirmed the lock before its validity ended.
	LostDeadline LossCause = iota + 1
	// LostRefused: a quorum said the key is gone or owned by another.
	LostRefused
	// LostMaxHold: the lock was held for the limit set with WithMaxHold.
	LostMaxHold
	// LostClosed: the Client was closed while the lock was held.
	LostClosed
	// LostDisowned: a node answered the acquisition, after a quorum had
	// granted it, that the lock may not be held at all: it stores another
	// limit for a Semaphore.
	LostDisowned
)

func (c LossCause) String() string {
	switch c {
	case LostDeadline:
		return "deadline"
	case LostRefused:
		return "refused"
	case LostMaxHold:
		return "max_hold"
	case LostClosed:
		return "closed"
	case LostDisowned:
		return "disowned"
	}
	return "unknown"
}

// LostEvent describes the loss of a held lock.
type LostEvent struct {
	Kind  Kind
	Name  string
	Cause LossCause
	Held  time.Duration // from the acquisition to the loss
	Err   error         // the held context's cause; it wraps ErrLockLost
}

// NodeErrorEvent describes a failed call to one node. It names no kind: the
// nodes serve every lock of the Client.
type NodeErrorEvent struct {
	Node int    // index of the node in the client list given to New or Dial
	Addr string // the node's address, where known
	Err  error
}

// WithObserver sets the Observer that receives the events of the locks:
// given to New or Dial, of every Mutex of the Client; given to NewMutex, of
// that Mutex, in place of the Client's. NodeError events concern the nodes,
// which every Mutex of the Client shares: they go to the Client's Observer
// only. Default nil, which observes nothing.
func WithObserver(o *Observer) Option {
	return func(c *config) { c.observer = o }
}

// observe calls f with event, and logs a panic in f instead of passing it
// on. It is called only where f is not nil.
func observe[E any](logger *slog.Logger, name string, f func(E), event E) {
	defer func() {
		if r := recover(); r != nil {
			logger.Error("redlock: observer panicked; the lock carries on", "event", name, "panic", r)
		}
	}()
	f(event)
}

// events delivers one lock's events to its Observer. Every observer call of
// the package goes through it, or through eventOrder, which keeps the events
// of one lease in order. With no Observer it does nothing, and its methods
// are not reached where building the event would cost: callers check on().
type events struct {
	observer *Observer // nil: none
	logger   *slog.Logger
	kind     Kind
	name     string
}

// on reports whether an Observer is set.
func (e *events) on() bool { return e.observer != nil }

// acquired tells of an acquisition by a call that began at start.
func (e *events) acquired(ctx context.Context, start time.Time, attempts int, token uint64) {
	if f := e.observer.Acquired; f != nil {
		observe(e.logger, "Acquired", f, AcquiredEvent{Context: ctx, Kind: e.kind, Name: e.name, Start: start, Wait: time.Since(start), Attempts: attempts, Token: token})
	}
}

// notAcquired tells of a call that began at start and returned err.
func (e *events) notAcquired(ctx context.Context, start time.Time, attempts int, err error) {
	if f := e.observer.NotAcquired; f != nil {
		observe(e.logger, "NotAcquired", f, NotAcquiredEvent{Context: ctx, Kind: e.kind, Name: e.name, Start: start, Wait: time.Since(start), Attempts: attempts, Err: err})
	}
}

// extended tells of one lock's part in an extension round that began at
// start and was decided at decidedAt.
func (e *events) extended(start, decidedAt time.Time, outcome ExtendOutcome) {
	if f := e.observer.Extended; f != nil {
		observe(e.logger, "Extended", f, ExtendedEvent{Kind: e.kind, Name: e.name, Latency: decidedAt.Sub(start), Outcome: outcome})
	}
}

// eventOrder keeps the events of one lease in their order: Acquired, then
// at most one Lost, then Released. A loss found before the acquiring call
// told its Acquired (a maximum hold shorter than the acquisition, a pause)
// waits, and is delivered right after the Acquired, and so does a Released;
// Released also waits for a Lost in delivery. Its zero value is ready.
type eventOrder struct {
	mu              sync.Mutex
	told            bool           // the Acquired has been told
	pending         *LostEvent     // a Lost waiting for the Acquired
	pendingReleased *ReleasedEvent // a Released waiting for it: another goroutine unlocked at once
	inFlight        sync.WaitGroup
}

// losing records that a Lost is coming, before the lease's loss can be
// seen by its holder, so that its Released waits for it.
func (o *eventOrder) losing(e *events) {
	if e.on() && e.observer.Lost != nil {
		o.inFlight.Add(1)
	}
}

// lost delivers a Lost announced by losing, now if the Acquired has been
// told, or else right after it.
func (o *eventOrder) lost(e *events, event LostEvent) {
	if !e.on() || e.observer.Lost == nil {
		return
	}
	o.mu.Lock()
	if !o.told {
		o.pending = &event
		o.mu.Unlock()
		return
	}
	o.mu.Unlock()
	defer o.inFlight.Done()
	observe(e.logger, "Lost", e.observer.Lost, event)
}

// acquired tells the lease's Acquired, with tell, and then the Lost that
// came before it, if one did. The acquiring call calls it, where an
// Observer is set, before it returns.
func (o *eventOrder) acquired(e *events, tell func()) {
	tell()
	o.mu.Lock()
	o.told = true
	pending, released := o.pending, o.pendingReleased
	o.pending, o.pendingReleased = nil, nil
	o.mu.Unlock()
	if pending != nil {
		observe(e.logger, "Lost", e.observer.Lost, *pending)
		o.inFlight.Done()
	}
	if released != nil {
		o.deliverReleased(e, *released)
	}
}

// released tells the lease's Released, once any Lost has been delivered,
// and once the Acquired has: a Released that comes first (another
// goroutine unlocked the Mutex before the acquiring call returned) is
// delivered by acquired, right after it.
func (o *eventOrder) released(e *events, event ReleasedEvent) {
	o.mu.Lock()
	if !o.told {
		o.pendingReleased = &event
		o.mu.Unlock()
		return
	}
	o.mu.Unlock()
	o.deliverReleased(e, event)
}

func (o *eventOrder) deliverReleased(e *events, event ReleasedEvent) {
	o.inFlight.Wait()
	if f := e.observer.Released; f != nil {
		observe(e.logger, "Released", f, event)
	}
}
