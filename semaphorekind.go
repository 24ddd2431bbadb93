package redlock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
)

// A Semaphore of P permits has P slots, and each slot is a Redlock mutex of
// its own: a key per slot on every master, set to its holder's value with
// SET NX PX, extended and deleted with the Mutex's scripts. A permit is a
// lease that holds one slot on a quorum. The safety argument is in doc.go.
//
// The keys of a Semaphore named n share the hash tag {n}, after a base of
// their own, so that a Mutex of the same name shares none of them:
//
//	prefix{n}:semaphore:slot:I    slot I, 0 ≤ I < P: a holder's value
//	prefix{n}:semaphore:permits   the limit P, which every user must share
//	prefix{n}:semaphore:waiters   the one queue of waiters, and its two sets
const (
	semaphoreSuffix = ":semaphore"
	slotSuffix      = ":slot:"
	limitSuffix     = ":permits"
)

// MaxPermits is the most permits a Semaphore may have. Each permit is a key
// on every master, and Status reads every slot in one script, as a refused
// grant reads up to slotWindow of them: 1024 keeps those scripts well under
// a millisecond of the master's time.
const MaxPermits = 1024

// slotWindow is how many slots a refused grant reports on: the slot it
// asked for and those after it, one bit each of a uint64.
const slotWindow = 64

// limitLifetime is how long a master keeps a Semaphore's limit after the
// last grant, extension or repair of one of its slots there: the limit is
// checked against every user's while it lives, so it lives as long as a
// permit is held, and must not linger for ever once the name is no longer
// used.
const limitLifetime = 24 * time.Hour

// semaphoreKeys are the keys of one Semaphore, shared by its slots' kinds.
type semaphoreKeys struct {
	limit     string
	slots     []string // slots[i] is slot i's key
	queueKeys []any    // for enqueue.lua: the queue, the limit, its live waiters, those that left
	// wakeKeys is for release.lua when it only wakes the next waiter: the
	// limit (which it does not read), the queue and its live waiters.
	wakeKeys []any
	// statusKeys is for semstatus.lua: the limit, the queue, its live
	// waiters, then every slot.
	statusKeys []any
}

func newSemaphoreKeys(base string, permits int) *semaphoreKeys {
	k := &semaphoreKeys{limit: base + limitSuffix, slots: make([]string, permits)}
	queue, alive, left := base+queueSuffix, base+aliveSuffix, base+leftSuffix
	k.queueKeys = []any{queue, k.limit, alive, left}
	k.wakeKeys = []any{k.limit, queue, alive}
	k.statusKeys = append(make([]any, 0, 3+permits), k.limit, queue, alive)
	for i := range k.slots {
		k.slots[i] = base + slotSuffix + strconv.Itoa(i)
		k.statusKeys = append(k.statusKeys, k.slots[i])
	}
	return k
}

// slotKind is the kind of the leases that hold one slot of a Semaphore.
// The slot is a Mutex's key in all but its grant, its extension and its
// repair: its release (which wakes the next waiter of the Semaphore's one
// queue) and its forgetting are the Mutex kind's, on the slot's key. Its
// extension and its repair also renew the Semaphore's limit, so that the
// limit lives as long as a permit is held, and a user with another number
// of permits is told so however long the holders keep their permits.
type slotKind struct {
	mutexKind
	name        string // the Semaphore's
	slot        int
	acquireKeys []any // the slot, the limit, then the rest of the window
	repairKeys  []any // the slot and the limit
	limitArg    any   // the limit's key
	permits     int
	permitsArg  any // permits, as the script's argument
	limitMillis any // limitLifetime in milliseconds
}

func newSlotKind(c *Client, name string, keys *semaphoreKeys, slot int, cfg *config) *slotKind {
	key := keys.slots[slot]
	permits := len(keys.slots)
	window := min(permits, slotWindow)
	acquireKeys := make([]any, 0, 1+window)
	acquireKeys = append(acquireKeys, key, keys.limit)
	for k := 1; k < window; k++ {
		acquireKeys = append(acquireKeys, keys.slots[(slot+k)%permits])
	}
	return &slotKind{
		mutexKind: mutexKind{
			client:      c,
			key:         key,
			guard:       cfg.restartGuard,
			keyArg:      key,
			releaseKeys: append([]any{key}, keys.wakeKeys[1:]...),
			ttlMillis:   cfg.ttl.Milliseconds(),
		},
		name:        name,
		slot:        slot,
		acquireKeys: acquireKeys,
		repairKeys:  []any{key, keys.limit},
		limitArg:    keys.limit,
		permits:     permits,
		permitsArg:  permits,
		limitMillis: limitLifetime.Milliseconds(),
	}
}

// grant asks a node for the slot, once the node's limit agrees with the
// Semaphore's. A grant's report is 0; a refusal's is the slots of the
// window that are free on the node: bit b for slot (slot+b) mod permits,
// so that the attempt can try a free one next. A limit that differs comes
// back as a *permitsMismatchError. With a restart guard, a node up for less
// than the guard does not vote, as for a Mutex.
func (k *slotKind) grant(value string) nodeCall[uint64] {
	acquire := prepare(semAcquireScript, k.acquireKeys, value, k.ttlMillis, k.permitsArg, k.limitMillis, flag(k.guard > 0))
	return func(ctx context.Context, n *node, live liveness) reply[uint64] {
		res, err := acquire.run(ctx, n, live).Slice()
		if err == nil && len(res) != 4 {
			err = fmt.Errorf("semaphore acquire script returned %d values; want 4", len(res))
		}
		if err != nil {
			return reply[uint64]{err: err}
		}
		outcome, _ := res[0].(int64)
		detail, _ := res[1].(string)
		runID, _ := res[2].(string)
		uptime, _ := res[3].(int64)
		if k.guard > 0 {
			k.client.noticeRestart(n, runID, uptime)
			if up := time.Duration(uptime) * time.Second; up < k.guard {
				return reply[uint64]{err: fmt.Errorf("%w: up for %v, less than the restart guard %v", errRecentlyRestarted, up, k.guard)}
			}
		}
		switch outcome {
		case 1:
			return reply[uint64]{ok: true}
		case -1:
			return reply[uint64]{err: &permitsMismatchError{stored: detail, permits: k.permits}}
		}
		return reply[uint64]{value: slotBits(detail, '1')}
	}
}

// extension extends the slot while value holds it, and the limit with it,
// to the limit's lifetime.
func (k *slotKind) extension(string) extension {
	return extension{key: k.keyArg, ttl: k.ttlMillis, renewed: k.limitArg, until: k.limitMillis}
}

// repair sets the slot again, as the Mutex kind's repair sets its key, on a
// node that lost it, and renews the limit there, or sets it if the node
// lost it too (a restart); a limit that differs is left for the next
// grant to report.
func (k *slotKind) repair(value string, until time.Time) nodeCall[none] {
	return func(ctx context.Context, n *node, live liveness) reply[none] {
		deadline, _ := ctx.Deadline()
		px := until.Sub(deadline).Milliseconds()
		if px < 1 {
			return reply[none]{err: errTooLate}
		}
		res, err := prepare(semRepairScript, k.repairKeys, value, px, k.permitsArg, k.limitMillis).run(ctx, n, live).Int64()
		return reply[none]{ok: err == nil && res == 1, err: err}
	}
}

// disowns is the loss of a permit whose grant a node answered, after a
// quorum had granted it, with another limit: every user of the name must
// give up, not only those that hear the node in time.
func (k *slotKind) disowns(n *node, rep reply[uint64]) error {
	var mismatch *permitsMismatchError
	if !errors.As(rep.err, &mismatch) {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrLockLost, permitsMismatch(k.name, k.permits, n, mismatch.stored))
}

// permitsMismatch is the error of a Semaphore named name, of permits
// permits, when node n stores a limit of stored.
func permitsMismatch(name string, permits int, n *node, stored string) error {
	return fmt.Errorf("%w: semaphore %q has %d permits here, but node %d (%s) stores a limit of %s: every user of a name must give the same number",
		ErrPermitsMismatch, name, permits, n.index, n.addr, stored)
}

// slotBits reads a script's string of one character per slot as bits: bit
// b is set where character b is set.
func slotBits(text string, set byte) uint64 {
	var bits uint64
	for b := 0; b < len(text) && b < 64; b++ {
		if text[b] == set {
			bits |= 1 << b
		}
	}
	return bits
}

// permitsMismatchError is a node's answer to a grant when the limit it
// stores for the Semaphore is not the caller's number of permits. It is the
// server's answer, not a failure to get one: nothing was written.
type permitsMismatchError struct {
	stored  string // the limit on the node
	permits int    // the caller's
}

func (e *permitsMismatchError) Error() string {
	return fmt.Sprintf("the semaphore's limit stored here is %s permits, not %d", e.stored, e.permits)
}

// RedisError marks the error as the server's answer (see fromServer).
func (e *permitsMismatchError) RedisError() {}

// semaphoreNodeStatus is what one node says of a Semaphore.
type semaphoreNodeStatus struct {
	limit   string // the limit stored, or ""
	held    string // one character per slot, '1' where it is held
	waiters int    // the live waiters queued
}

// semaphoreStatus reads a Semaphore's limit, its slots and, if most > 0,
// its live waiters among the first most of its queue, on a node.
func semaphoreStatus(keys *semaphoreKeys, most int) nodeCall[semaphoreNodeStatus] {
	status := prepare(semStatusScript, keys.statusKeys, most)
	return func(ctx context.Context, n *node, live liveness) reply[semaphoreNodeStatus] {
		return readSemaphoreStatus(ctx, n, live, status)
	}
}

// readSemaphoreStatus runs a prepared status script on n and reads its
// reply.
func readSemaphoreStatus(ctx context.Context, n *node, live liveness, status prepared) reply[semaphoreNodeStatus] {
	res, err := status.run(ctx, n, live).Slice()
	if err == nil && len(res) != 3 {
		err = fmt.Errorf("semaphore status script returned %d values; want 3", len(res))
	}
	if err != nil {
		return reply[semaphoreNodeStatus]{err: err}
	}
	limit, _ := res[0].(string)
	held, _ := res[1].(string)
	waiting, _ := res[2].(int64)
	return reply[semaphoreNodeStatus]{ok: true, value: semaphoreNodeStatus{limit: limit, held: held, waiters: int(waiting)}}
}

// joinCall puts waiter in the Semaphore's queue on a node, or takes it out,
// as enqueueCall does, and then reads which slots the node holds. The read
// comes after the join, so that a release the read does not see came after
// the waiter was queued, and wakes it.
func joinCall(keys *semaphoreKeys, waiter, mode string, aliveTTL, queueTTL time.Duration) nodeCall[semaphoreNodeStatus] {
	enqueue := enqueueCall(keys.queueKeys, waiter, mode, aliveTTL, queueTTL)
	status := prepare(semStatusScript, keys.statusKeys, 0)
	return func(ctx context.Context, n *node, live liveness) reply[semaphoreNodeStatus] {
		if rep := enqueue(ctx, n, live); rep.err != nil {
			return reply[semaphoreNodeStatus]{err: rep.err}
		}
		return readSemaphoreStatus(ctx, n, live, status)
	}
}

// slotSpecs makes each slot's kind and lease spec at its first use: a
// Semaphore of many permits that only ever uses a few costs only those.
type slotSpecs struct {
	specs []atomic.Pointer[leaseSpec]
	make  func(slot int) *leaseSpec
}

// get returns slot's spec, made once.
func (s *slotSpecs) get(slot int) *leaseSpec {
	if spec := s.specs[slot].Load(); spec != nil {
		return spec
	}
	spec := s.make(slot)
	if s.specs[slot].CompareAndSwap(nil, spec) {
		return spec
	}
	return s.specs[slot].Load()
}
