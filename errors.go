package redlock

import (
	"context"
	"errors"
	"fmt"
	"github.com/redis/go-redis/v9"
	"net"

	"github.com/seed62cefe0a/redlock/internal/failure"
)

var (
	// ErrNotAcquired means the lock was not acquired: another holder has it
	// (ErrTaken), too few nodes answered (ErrNoQuorum), or the wait ended. It
	// is joined with the context's error and with the last attempt's reasons.
	ErrNotAcquired = errors.New("redlock: lock not acquired")

	// ErrTaken is the reason of an attempt in which one or more nodes refused
	// the lock because another owner holds it there, or in which another
	// goroutine of this process holds the Mutex. It wraps ErrNotAcquired.
	ErrTaken = fmt.Errorf("%w: taken by another owner", ErrNotAcquired)

	// ErrNoQuorum is the reason of an attempt in which one or more nodes did
	// not answer in time or answered with an error, so that too few granted
	// the lock; the node errors are joined with it. It is also the reason of
	// an attempt whose grants came too late to leave any validity, or, with
	// WithFencing, had vanished from too many nodes when the token was
	// recorded. It wraps ErrNotAcquired. An attempt that missed the quorum
	// both for this reason and because of ErrTaken reports both.
	ErrNoQuorum = fmt.Errorf("%w: nodes failed or did not answer in time", ErrNotAcquired)

	// ErrPermitsMismatch means a Semaphore's number of permits is not the
	// limit a node stores for its name, which another user set: every user
	// of a name must give the same number. It is permanent, as an ACL
	// denial is, and the error names both numbers. It wraps ErrNotAcquired.
	ErrPermitsMismatch = fmt.Errorf("%w: permits differ from the semaphore's limit", ErrNotAcquired)

	// ErrLockLost is the cause of a held context that ended because the lock
	// could no longer be confirmed on a quorum of nodes before its validity
	// ran out, or because a quorum said the key is gone or owned by another.
	ErrLockLost = errors.New("redlock: lock lost")

	// ErrNotHeld is returned by UnlockContext when the Mutex is not locked.
	ErrNotHeld = errors.New("redlock: lock not held")

	// ErrNoLeader is returned by Election.Leader when nobody leads: no
	// candidate holds the election on a quorum of masters.
	ErrNoLeader = errors.New("redlock: no leader")

	// ErrClosed is returned by calls on a Client, or on its mutexes, after
	// Client.Close.
	ErrClosed = errors.New("redlock: client closed")

	// errTakenHere is the reason of an attempt that found the Mutex held by
	// another goroutine of this process.
	errTakenHere = fmt.Errorf("%w: held by another goroutine of this process", ErrTaken)

	// errRecentlyRestarted is reported for a node whose uptime is below the
	// restart guard: it may have forgotten locks it granted before.
	errRecentlyRestarted = errors.New("recently restarted")

	// The errors of calls never sent to their node. Each is a
	// *notSentError, so notSent knows them all without a list.

	// errTooBusy is reported for a node that already has the maximum number
	// of calls in flight, as happens while it hangs.
	errTooBusy = neverSent(errors.New("too many calls in flight to this node"))

	// errReleaseOnAnswer is reported by Unlock for a node whose grant had
	// not been heard of yet: it is released once the node answers.
	errReleaseOnAnswer = neverSent(errors.New("released once its grant, still in flight, is answered"))

	// errNotRepaired is the reply of a node a repair round does not call:
	// it still had the key.
	errNotRepaired = neverSent(errors.New("not repaired: it has the key"))
	// errWokeIt is the reply of a node that a winner's dequeue skips: it
	// took the winner out of its queue to wake it.
	errWokeIt = neverSent(errors.New("not dequeued: it woke the waiter"))

	// errTooLate is the reply of a repair that would have been sent too
	// late to leave any validity.
	errTooLate = neverSent(errors.New("not repaired: too little validity left"))

	// errEnded is the reply of a grant or repair not sent because its
	// holding ended while the call waited for the node.
	errEnded = neverSent(errors.New("not sent: the attempt or holding had ended"))

	// errNodesClosed is the reply of a call that a closed Client did not
	// send.
	errNodesClosed = neverSent(ErrClosed)
)

// notSentError is the error of a call that was never sent to its node: it
// cannot have run, and says nothing of the node's health.
type notSentError struct{ err error }

func neverSent(err error) *notSentError { return &notSentError{err} }

func (e *notSentError) Error() string { return e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

// notSent reports whether a call that failed with err was never sent.
func notSent(err error) bool {
	if err == nil {
		return false
	}
	var never *notSentError
	return errors.As(err, &never)
}

// asSent is the error of a call as a round records it: go-redis's
// ErrClosed, from a client closed under the Client, means the call was
// never sent either.
func asSent(err error) error {
	if err != nil && errors.Is(err, redis.ErrClosed) && !notSent(err) {
		return neverSent(err)
	}
	return err
}

// fromServer reports whether a call that ended with err got a reply from
// the server.
func fromServer(err error) bool {
	if err == nil {
		return true // before the variable below, which escapes: no allocation
	}
	var redisErr redis.Error
	return errors.As(err, &redisErr)
}

// timedOut reports whether err means the node did not answer in time, as
// opposed to answering, or refusing the connection.
func timedOut(err error) bool {
	if err == nil {
		return false
	}
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout())
}

// neverRan reports whether a call that failed with err cannot have run on
// the server: it was never sent, or its connection could not be made.
func neverRan(err error) bool {
	if err == nil {
		return false
	}
	var opErr *net.OpError
	return notSent(err) || (errors.As(err, &opErr) && opErr.Op == "dial")
}

// maybeRan reports whether a call that failed with err may still have run
// on the server, or may yet run: its reply was lost, or is late. A reply
// from the server, a refused connection and a call never sent rule that out.
func maybeRan(err error) bool {
	return !fromServer(err) && !neverRan(err)
}

// NodeError is the error of one node in a round of calls.
type NodeError struct {
	Node int    // index of the node in the client list given to New or Dial
	Addr string // the node's address, where known
	Err  error
}

func (e *NodeError) Error() string {
	if e.Addr == "" {
		return fmt.Sprintf("redlock: node %d: %v", e.Node, e.Err)
	}
	return fmt.Sprintf("redlock: node %d (%s): %v", e.Node, e.Addr, e.Err)
}

func (e *NodeError) Unwrap() error { return e.Err }

// permanent reports whether err is one that retrying cannot fix: a denied
// authentication or permission, a script the server rejects, or a closed
// client. Timeouts, refused connections and the like are transient.
func permanent(err error) bool {
	return errors.Is(err, ErrClosed) || failure.Permanent(err)
}
