package redlock

import "time"

// leaseKind is the seam between the lease core and a kind of lock: what a
// Mutex, a Semaphore or an Election supplies so that the core can acquire,
// extend, repair and release its leases without knowing which it serves.
// Each call it returns is one node's part of a round; the core decides
// when to make it, counts the replies, and undoes what a late reply did.
// A kind is immutable once its lock is made, and its calls are safe for
// concurrent use.
type leaseKind interface {
	// grant is the acquisition's call: it takes the lease for value on a
	// node. Its report is for the kind's face alone, which reads it from
	// the round's outcome: a Mutex's grant reports the node's fencing
	// counter, or 0; a refusal of a Semaphore's slot, the slots free there.
	grant(value string) nodeCall[uint64]
	// release deletes value's hold on a node, if value still holds it.
	// With wake it is a holder's release: it also takes waiter (its own
	// queue id, or "") out of the queue and wakes the next live waiter;
	// without, it undoes a grant that nobody held, and wakes no one.
	release(value, waiter string, wake bool) nodeCall[releaseReport]
	// repair sets value's hold again on a node that lost it, to last
	// until until at the latest, and never over another holder's.
	repair(value string, until time.Time) nodeCall[none]
	// extension is value's part of a batched extension: the lease's key
	// and its TTL, and a key renewed with it; the keys are extended only
	// while the lease's key holds value.
	extension(value string) extension
	// disowns is why a node's reply to a grant, heard after the round was
	// won, ends the lease, or nil: a reply that says the lease may not be
	// held beside the node's own (a Semaphore's node that stores another
	// limit). A Mutex's kind never disowns.
	disowns(n *node, rep reply[uint64]) error
	// forgetting is how a hold of this kind that may be left on a node is
	// released later, with others of the same key (see leftovers).
	forgetting() forgetting
}

// extension is one lease's part of extend.lua's call: its key, its TTL in
// milliseconds, and a key that the kind keeps alive as long as the lease
// is held, with that key's TTL in milliseconds (0, with the lease's key
// again, for none).
type extension struct {
	key, ttl       any
	renewed, until any
}

// releaseReport is what a node says of a release beyond whether it deleted
// the hold.
type releaseReport struct {
	woke    bool // it woke a queued waiter
	unheard bool // it could not publish the wake-up (an ACL without channel permissions)
}
