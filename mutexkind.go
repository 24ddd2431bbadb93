package redlock

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// mutexKind is the Mutex's kind of lease: one key per lock, which a holder
// sets to its value with SET NX PX and deletes with a compare-and-delete,
// as every Redlock client does; a fencing counter beside it; and a queue of
// waiters, whose releases wake the next. It makes the calls of the rounds
// over the lock's nodes; its arguments are made once, so that each call
// does not convert them again.
type mutexKind struct {
	client      *Client
	key         string
	fencing     bool
	guard       time.Duration // the restart guard, or 0
	keyArg      any           // the lock's key
	keyAndFence []any         // the lock's key and its fencing counter
	releaseKeys []any         // the lock's key, its queue and its live waiters
	enqueueKeys []any         // the lock's queue, its key, its live waiters and those that left
	ttlMillis   any           // the TTL in milliseconds
	// renewed is a key the watchdog extends with the lock, to renewedTTL
	// milliseconds (an Election's record of its leader); the lock's key
	// and renewNothing for none.
	renewed, renewedTTL any
	// record is a key deleted with the lock, by a release or as a
	// leftover (an Election's record of its leader), or "".
	record string
	// recorder, if set, returns the call that writes the record of
	// holder's term again after a repair put its key back, or nil.
	recorder func(holder string) nodeCall[none]
}

// The lock's other keys are named after its key, in the same hash slot.
// Every key a script touches is one of them, named in its KEYS.
const (
	fenceSuffix = ":fence"         // the fencing counter
	queueSuffix = ":waiters"       // the queue of waiters
	aliveSuffix = ":waiters:alive" // waiter ids, scored with the time until which they count as alive
	leftSuffix  = ":waiters:left"  // ids of waiters that gave up, scored with the time until which they stay out
)

func newMutexKind(c *Client, key string, cfg *config) mutexKind {
	return mutexKind{
		client:      c,
		key:         key,
		fencing:     cfg.fencing,
		guard:       cfg.restartGuard,
		keyArg:      key,
		keyAndFence: []any{key, key + fenceSuffix},
		releaseKeys: []any{key, key + queueSuffix, key + aliveSuffix},
		enqueueKeys: []any{key + queueSuffix, key, key + aliveSuffix, key + leftSuffix},
		ttlMillis:   cfg.ttl.Milliseconds(),
		renewed:     key,
		renewedTTL:  renewNothing,
	}
}

// grant asks a node for the lock. With fencing it also reads the node's
// counter; with a restart guard, a node up for less than guard does not vote:
// its grant comes back as an error (and is released if the round fails).
//
// Without either, a node gets a plain SET NX, with no script to parse and
// run on the server, once a script has run there: the lock is extended and
// released by scripts, and a user whose ACL denies them must not take a
// lock it cannot give back, so until then the acquisition goes through the
// script, whose denial fails it for good. A node whose client sends
// commands again by itself also gets the script: a resent SET NX that finds
// the key its lost first copy set answers as a refusal, and the script
// knows the key for its own.
func (k *mutexKind) grant(value string) nodeCall[uint64] {
	guard, fencing := k.guard, k.fencing
	// The arguments are shared by the node calls, which only read them.
	args := []any{"set", k.keyArg, value, "px", k.ttlMillis, "nx"}
	if !fencing && guard == 0 && !k.client.retries && k.client.scriptsRunEverywhere() {
		return func(ctx context.Context, n *node, live liveness) reply[uint64] {
			return setNX[uint64](ctx, n, live, args)
		}
	}
	acquire := prepare(acquireScript, k.keyAndFence, value, k.ttlMillis, flag(fencing), flag(guard > 0))
	return func(ctx context.Context, n *node, live liveness) reply[uint64] {
		if fencing || guard > 0 || n.retries || !n.scriptsRun.Load() {
			return k.acquireScripted(ctx, n, live, acquire)
		}
		return setNX[uint64](ctx, n, live, args)
	}
}

// acquireScripted runs the acquire script on n and reads its reply.
func (k *mutexKind) acquireScripted(ctx context.Context, n *node, live liveness, acquire prepared) reply[uint64] {
	res, err := acquire.run(ctx, n, live).Slice()
	if err != nil {
		return reply[uint64]{err: err}
	}
	if len(res) != 4 {
		return reply[uint64]{err: fmt.Errorf("acquire script returned %d values; want 4", len(res))}
	}
	granted, _ := res[0].(int64)
	counterText, _ := res[1].(string)
	runID, _ := res[2].(string)
	uptime, _ := res[3].(int64)
	if k.guard > 0 {
		k.client.noticeRestart(n, runID, uptime)
		if up := time.Duration(uptime) * time.Second; up < k.guard {
			return reply[uint64]{err: fmt.Errorf("%w: up for %v, less than the restart guard %v", errRecentlyRestarted, up, k.guard)}
		}
	}
	if granted != 1 {
		return reply[uint64]{}
	}
	counter, err := strconv.ParseUint(counterText, 10, 64)
	if err != nil {
		return reply[uint64]{err: fmt.Errorf("fencing counter %q: %w", counterText, err)}
	}
	return reply[uint64]{ok: true, value: counter}
}

// setNX sends args, a SET ... NX, and reads the reply. If the command had to
// be sent again and the server refused it, the refusal may be the key that
// the lost first copy set: the key is read to tell.
func setNX[R any](ctx context.Context, n *node, live liveness, args []any) reply[R] {
	cmd, resent := send(ctx, n, live, redis.NewStatusCmd, args)
	err := cmd.Err()
	if err == redis.Nil && resent {
		value, getErr := n.client.Get(ctx, args[1].(string)).Result()
		if getErr != nil && getErr != redis.Nil {
			return reply[R]{err: getErr}
		}
		return reply[R]{ok: value == args[2]}
	}
	if err == redis.Nil {
		return reply[R]{}
	}
	return reply[R]{ok: err == nil, err: err}
}

// fence records token on a node while value still holds the lock there.
func (k *mutexKind) fence(value string, token uint64) nodeCall[none] {
	fence := prepare(fenceScript, k.keyAndFence, value, token)
	return func(ctx context.Context, n *node, live liveness) reply[none] {
		res, err := fence.run(ctx, n, live).Int64()
		return reply[none]{ok: err == nil && res == 1, err: err}
	}
}

// The release script's channel prefix argument, boxed once: "" wakes no one.
var wakeArgs = [2]any{"", wakeChannelPrefix}

// release deletes the key if value still holds it. With wake it also takes
// the holder's own waiter id (if any) out of the lock's queue and wakes the
// next live waiter, by publishing its id on the channel of the waiter's
// Client, which the script finds from the id.
func (k *mutexKind) release(value, waiter string, wake bool) nodeCall[releaseReport] {
	channelPrefix := wakeArgs[0]
	if wake {
		channelPrefix = wakeArgs[1]
	}
	release := prepare(releaseScript, k.releaseKeys, value, channelPrefix, waiter)
	return func(ctx context.Context, n *node, live liveness) reply[releaseReport] {
		cmd, resent := release.runResent(ctx, n, live)
		res, err := cmd.Int64()
		if err == nil && res == 0 && (resent || n.retries) {
			// The key may be gone because an earlier copy, whose reply was
			// lost, deleted it: not a sign that the lock was lost.
			res = 1
		}
		ok := err == nil && res >= 1
		return reply[releaseReport]{ok: ok, err: err, value: releaseReport{woke: ok && res == 2, unheard: ok && res == 3}}
	}
}

// repair puts the key back, with SET NX, on a node that lost it. The key
// lives until until at the latest: its PX is what is left of the validity
// at the round's deadline, after which go-redis does not send the command
// (a pooled connection is waited for no longer than the context allows).
func (k *mutexKind) repair(value string, until time.Time) nodeCall[none] {
	return func(ctx context.Context, n *node, live liveness) reply[none] {
		deadline, _ := ctx.Deadline()
		px := until.Sub(deadline).Milliseconds()
		if px < 1 {
			return reply[none]{err: errTooLate}
		}
		rep := setNX[none](ctx, n, live, []any{"set", k.keyArg, value, "px", px, "nx"})
		if rep.ok && k.recorder != nil {
			if record := k.recorder(value); record != nil {
				// A reader of a repaired quorum would find no record.
				_ = record(ctx, n, live)
			}
		}
		return rep
	}
}

// extension is the key and TTL of extend.lua for any value; a Mutex
// renews no other key with it, an Election its record.
func (k *mutexKind) extension(string) extension {
	return extension{key: k.keyArg, ttl: k.ttlMillis, renewed: k.renewed, until: k.renewedTTL}
}

// renewNothing is extend.lua's TTL for a renewed key that is not renewed.
var renewNothing any = 0

// disowns is nil: a Mutex's node that refused the lock after a quorum
// granted it has no say over the holder.
func (k *mutexKind) disowns(*node, reply[uint64]) error { return nil }

// forgetting deletes the key where it holds a leftover value.
func (k *mutexKind) forgetting() forgetting { return forgetting{forgetScript, k.key, k.record} }

// Modes of enqueue.
const (
	enqueueLast  = "0"
	enqueueFirst = "1"
	dequeue      = "-"
)

// enqueue puts waiter in the lock's queue on a node, or takes it out, as
// mode says; the waiter counts as alive for aliveTTL, and the queue lives
// for queueTTL after its last change (see retryPolicy). The reply names
// the value that holds the lock on the node.
func (k *mutexKind) enqueue(waiter, mode string, aliveTTL, queueTTL time.Duration) nodeCall[string] {
	return enqueueCall(k.enqueueKeys, waiter, mode, aliveTTL, queueTTL)
}

// leave takes waiter out of the lock's queue on a node, and passes on a
// wake-up that a release sent it there (see leaveCall).
func (k *mutexKind) leave(waiter string, aliveTTL, queueTTL time.Duration) nodeCall[none] {
	return leaveCall(k.enqueueKeys, k.releaseKeys, waiter, aliveTTL, queueTTL)
}

// dequeue takes waiter out of the lock's queue on a node and marks it
// left, passing nothing on: a winner's leave.
func (k *mutexKind) dequeue(waiter string, queueTTL time.Duration) nodeCall[none] {
	return dequeueCall(k.enqueueKeys, waiter, queueTTL)
}

// dequeueCall runs enqueue.lua with dequeue on keys (see enqueueCall).
func dequeueCall(keys []any, waiter string, queueTTL time.Duration) nodeCall[none] {
	leave := prepare(enqueueScript, keys, waiter, dequeue, 0, queueTTL.Milliseconds())
	return func(ctx context.Context, n *node, live liveness) reply[none] {
		err := leave.run(ctx, n, live).Err()
		if err == redis.Nil {
			err = nil
		}
		return reply[none]{ok: err == nil, err: err}
	}
}

// leaveCall takes waiter out of a queue on a node and marks it left, as
// enqueue.lua does with dequeue. If the node says that a release took the
// waiter out of the queue to wake it, it then wakes the next live waiter
// there as a release does, releasing nothing: the waiter is leaving without
// using that wake-up (it gave up, or won a permit by polling), and it may
// not even have heard it yet, or the waiter behind it would wait for its
// next poll. wakeKeys are release.lua's: a key of the lock, which it does
// not read, the queue and its live waiters.
func leaveCall(enqueueKeys, wakeKeys []any, waiter string, aliveTTL, queueTTL time.Duration) nodeCall[none] {
	leave := prepare(enqueueScript, enqueueKeys, waiter, dequeue, aliveTTL.Milliseconds(), queueTTL.Milliseconds())
	wake := prepare(releaseScript, wakeKeys, "", wakeArgs[1], "")
	return func(ctx context.Context, n *node, live liveness) reply[none] {
		err := leave.run(ctx, n, live).Err()
		switch err {
		case redis.Nil: // not woken here
			return reply[none]{ok: true}
		case nil:
			err = wake.run(ctx, n, live).Err()
		}
		return reply[none]{ok: err == nil, err: err}
	}
}

// enqueueCall runs enqueue.lua with keys: a queue, the key whose value it
// reports, the queue's live waiters and those that left.
func enqueueCall(keys []any, waiter, mode string, aliveTTL, queueTTL time.Duration) nodeCall[string] {
	enqueue := prepare(enqueueScript, keys, waiter, mode, aliveTTL.Milliseconds(), queueTTL.Milliseconds())
	return func(ctx context.Context, n *node, live liveness) reply[string] {
		holder, err := enqueue.run(ctx, n, live).Text()
		if err == redis.Nil {
			return reply[string]{ok: true}
		}
		return reply[string]{ok: err == nil, value: holder, err: err}
	}
}

// nodeStatus is what one node says of a lock.
type nodeStatus struct {
	holder  string        // the value that holds the key, or ""
	ttl     time.Duration // the key's PTTL
	waiters int           // the live waiters queued
}

// status reads the lock's value, its PTTL and its live waiters on a node.
func (k *mutexKind) status() nodeCall[nodeStatus] {
	status := prepare(statusScript, k.releaseKeys, maxStatusWaiters)
	return func(ctx context.Context, n *node, live liveness) reply[nodeStatus] {
		res, err := status.run(ctx, n, live).Slice()
		if err == nil && len(res) != 3 {
			err = fmt.Errorf("status script returned %d values; want 3", len(res))
		}
		if err != nil {
			return reply[nodeStatus]{err: err}
		}
		value, _ := res[0].(string)
		pttl, _ := res[1].(int64)
		waiting, _ := res[2].(int64)
		ttl := time.Duration(pttl) * time.Millisecond
		switch {
		case value == "":
			ttl = 0
		case pttl == -1: // no expiry
			ttl = math.MaxInt64
		}
		return reply[nodeStatus]{ok: true, value: nodeStatus{holder: value, ttl: ttl, waiters: int(waiting)}}
	}
}
