package redlock

import (
	"context"
	_ "embed"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The calls a round makes on each node, and the scripts they run.

var (
	//go:embed scripts/acquire.lua
	acquireSource string
	//go:embed scripts/fence.lua
	fenceSource string
	//go:embed scripts/enqueue.lua
	enqueueSource string
	//go:embed scripts/extend.lua
	extendSource string
	//go:embed scripts/release.lua
	releaseSource string
	//go:embed scripts/identify.lua
	identifySource string
	//go:embed scripts/forget.lua
	forgetSource string
	//go:embed scripts/status.lua
	statusSource string

	acquireScript  = newScript(acquireSource)
	fenceScript    = newScript(fenceSource)
	enqueueScript  = newScript(enqueueSource)
	extendScript   = newScript(extendSource)
	releaseScript  = newScript(releaseSource)
	identifyScript = newScript(identifySource)
	forgetScript   = newScript(forgetSource)
	statusScript   = newScript(statusSource)
)

// script is one of the library's Lua scripts, with its source for EVAL and
// its SHA1 boxed once, for the first argument of every EVALSHA.
type script struct {
	*redis.Script
	source string
	hash   any
}

func newScript(source string) *script {
	s := redis.NewScript(source)
	return &script{Script: s, source: source, hash: s.Hash()}
}

// prepared is a script with its keys and arguments, as the arguments of one
// EVALSHA command. A round builds it once and every node call shares it: the
// calls only read it. redis.Script.Run would box the keys and arguments
// again for every node, and it does not send a command again after a dead
// pooled connection fails it (see send).
type prepared struct {
	script *script
	args   []any
}

func prepare(s *script, keys []any, argv ...any) prepared {
	args := make([]any, 0, 3+len(keys)+len(argv))
	args = append(args, "evalsha", s.hash, len(keys))
	args = append(args, keys...)
	return prepared{script: s, args: append(args, argv...)}
}

// run runs the script on n, with EVAL if the server does not have it yet.
func (p prepared) run(ctx context.Context, n *node) *redis.Cmd {
	cmd, _ := p.runResent(ctx, n)
	return cmd
}

// runResent is run, and also reports whether the call was sent more than
// once: an earlier copy, whose reply was lost, may have run.
func (p prepared) runResent(ctx context.Context, n *node) (*redis.Cmd, bool) {
	cmd, resent := send(ctx, n, redis.NewCmd, p.args)
	if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		args := slices.Clone(p.args)
		args[0], args[1] = "eval", p.script.source
		var again bool
		cmd, again = send(ctx, n, redis.NewCmd, args)
		resent = resent || again
	}
	if err := cmd.Err(); (err == nil || err == redis.Nil) && !n.scriptsRun.Load() {
		n.scriptsRun.Store(true)
	}
	return cmd, resent
}

// mutexArgs are a Mutex's keys and TTL as command arguments, made once so
// that each call does not convert them again.
type mutexArgs struct {
	key         any   // the lock's key
	keyAndFence []any // the lock's key and its fencing counter
	releaseKeys []any // the lock's key, its queue and its live waiters
	enqueueKeys []any // the lock's queue, its key, its live waiters and those that left
	ttlMillis   any   // the TTL in milliseconds
}

// The lock's other keys are named after its key, in the same hash slot.
// Every key a script touches is one of them, named in its KEYS.
const (
	fenceSuffix    = ":fence"           // the fencing counter
	queueSuffix    = ":waiters"         // the queue of waiters
	aliveSuffix    = ":waiters:alive"   // waiter ids, scored with the time until which they count as alive
	leftSuffix     = ":waiters:left"    // ids of waiters that gave up, scored with the time until which they stay out
	identitySuffix = "identity:client:" // after the key prefix, + Client id: see identifyCall
)

func newMutexArgs(key string, ttl time.Duration) mutexArgs {
	return mutexArgs{
		key:         key,
		keyAndFence: []any{key, key + fenceSuffix},
		releaseKeys: []any{key, key + queueSuffix, key + aliveSuffix},
		enqueueKeys: []any{key + queueSuffix, key, key + aliveSuffix, key + leftSuffix},
		ttlMillis:   ttl.Milliseconds(),
	}
}

// acquireCall asks a node for the lock. With fencing it also reads the node's
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
func (m *Mutex) acquireCall(value string) nodeCall {
	guard, fencing := m.cfg.restartGuard, m.cfg.fencing
	// The arguments are shared by the node calls, which only read them.
	args := []any{"set", m.args.key, value, "px", m.args.ttlMillis, "nx"}
	if !fencing && guard == 0 && !m.client.retries && m.client.scriptsRunEverywhere() {
		return func(ctx context.Context, n *node) reply { return setNX(ctx, n, args) }
	}
	acquire := prepare(acquireScript, m.args.keyAndFence, value, m.args.ttlMillis, flag(fencing), flag(guard > 0))
	return func(ctx context.Context, n *node) reply {
		if fencing || guard > 0 || n.retries || !n.scriptsRun.Load() {
			return m.acquireScripted(ctx, n, acquire)
		}
		return setNX(ctx, n, args)
	}
}

// scriptsRunEverywhere reports whether a script has run on every node.
func (c *Client) scriptsRunEverywhere() bool {
	for _, n := range c.nodes {
		if !n.scriptsRun.Load() {
			return false
		}
	}
	return true
}

// acquireScripted runs the acquire script on n and reads its reply.
func (m *Mutex) acquireScripted(ctx context.Context, n *node, acquire prepared) reply {
	guard := m.cfg.restartGuard
	res, err := acquire.run(ctx, n).Slice()
	if err != nil {
		return reply{err: err}
	}
	if len(res) != 4 {
		return reply{err: fmt.Errorf("acquire script returned %d values; want 4", len(res))}
	}
	granted, _ := res[0].(int64)
	counterText, _ := res[1].(string)
	runID, _ := res[2].(string)
	uptime, _ := res[3].(int64)
	if guard > 0 {
		m.client.noticeRestart(n, runID, uptime)
		if up := time.Duration(uptime) * time.Second; up < guard {
			return reply{err: fmt.Errorf("%w: up for %v, less than the restart guard %v", errRecentlyRestarted, up, guard)}
		}
	}
	if granted != 1 {
		return reply{}
	}
	counter, err := strconv.ParseUint(counterText, 10, 64)
	if err != nil {
		return reply{err: fmt.Errorf("fencing counter %q: %w", counterText, err)}
	}
	return reply{ok: true, counter: counter}
}

// setNX sends args, a SET ... NX, and reads the reply. If the command had to
// be sent again and the server refused it, the refusal may be the key that
// the lost first copy set: the key is read to tell.
func setNX(ctx context.Context, n *node, args []any) reply {
	cmd, resent := send(ctx, n, redis.NewStatusCmd, args)
	err := cmd.Err()
	if err == redis.Nil && resent {
		value, getErr := n.client.Get(ctx, args[1].(string)).Result()
		if getErr != nil && getErr != redis.Nil {
			return reply{err: getErr}
		}
		return reply{ok: value == args[2]}
	}
	if err == redis.Nil {
		return reply{}
	}
	return reply{ok: err == nil, err: err}
}

func flag(on bool) string {
	if on {
		return "1"
	}
	return "0"
}

// noticeRestart logs when a node's run_id changes, which means it restarted.
func (c *Client) noticeRestart(n *node, runID string, uptime int64) {
	if runID == "" {
		return
	}
	previous := n.runID.Swap(&runID)
	if previous != nil && *previous != runID {
		c.cfg.logger.Warn("redlock: node restarted; its grants do not count until the restart guard has passed",
			"node", n.index, "addr", n.addr, "run_id", runID, "uptime_seconds", uptime)
	}
}

// fenceCall records token on a node while value still holds the lock there.
func (m *Mutex) fenceCall(value string, token uint64) nodeCall {
	fence := prepare(fenceScript, m.args.keyAndFence, value, token)
	return func(ctx context.Context, n *node) reply {
		res, err := fence.run(ctx, n).Int64()
		return reply{ok: err == nil && res == 1, err: err}
	}
}

// releaseCall deletes the key if value still holds it. With wake it also
// takes the holder's own waiter id (if any) out of the lock's queue and wakes
// the next live waiter, by publishing its id on the channel of the waiter's
// Client, which the script finds from the id.
func (m *Mutex) releaseCall(value, waiter string, wake bool) nodeCall {
	release := m.prepareRelease(value, waiter, wake)
	return func(ctx context.Context, n *node) reply { return release.release(ctx, n) }
}

// The release script's channel prefix argument, boxed once: "" wakes no one.
var wakeArgs = [2]any{"", wakeChannelPrefix}

// prepareRelease prepares the release script of releaseCall.
func (m *Mutex) prepareRelease(value, waiter string, wake bool) prepared {
	channelPrefix := wakeArgs[0]
	if wake {
		channelPrefix = wakeArgs[1]
	}
	return prepare(releaseScript, m.args.releaseKeys, value, channelPrefix, waiter)
}

// release runs a prepared release script on n.
func (p prepared) release(ctx context.Context, n *node) reply {
	cmd, resent := p.runResent(ctx, n)
	res, err := cmd.Int64()
	if err == nil && res == 0 && (resent || n.retries) {
		// The key may be gone because an earlier copy, whose reply was
		// lost, deleted it: not a sign that the lock was lost.
		res = 1
	}
	return reply{ok: err == nil && res >= 1, woke: err == nil && res == 2, unheard: err == nil && res == 3, err: err}
}

// Modes of enqueueCall.
const (
	enqueueLast  = "0"
	enqueueFirst = "1"
	dequeue      = "-"
)

// enqueueCall puts waiter in the lock's queue on a node, or takes it out.
// The reply names the value that holds the lock on the node.
func (m *Mutex) enqueueCall(waiter, mode string) nodeCall {
	enqueue := prepare(enqueueScript, m.args.enqueueKeys, waiter, mode, m.aliveTTL().Milliseconds(), m.queueTTL().Milliseconds())
	return func(ctx context.Context, n *node) reply {
		holder, err := enqueue.run(ctx, n).Text()
		if err == redis.Nil {
			return reply{ok: true}
		}
		return reply{ok: err == nil, holder: holder, err: err}
	}
}

// extendCall extends, on one node, the locks a prepared extend script names;
// count says how many.
func extendCall(extend prepared, count int) nodeCall {
	return func(ctx context.Context, n *node) reply {
		res, err := extend.run(ctx, n).Int64Slice()
		if err == nil && len(res) != count {
			err = fmt.Errorf("extend script returned %d values; want %d", len(res), count)
		}
		if err != nil {
			return reply{err: err}
		}
		extended := make([]bool, count)
		for j, v := range res {
			extended[j] = v == 1
		}
		return reply{ok: true, extended: extended}
	}
}

// repairCall puts the key back, with SET NX, on a node that lost it. The
// key lives until until at the latest: its PX is what is left of the
// validity at the round's deadline, after which go-redis does not send the
// command (a pooled connection is waited for no longer than the context
// allows).
func (m *Mutex) repairCall(value string, until time.Time) nodeCall {
	return func(ctx context.Context, n *node) reply {
		deadline, _ := ctx.Deadline()
		px := until.Sub(deadline).Milliseconds()
		if px < 1 {
			return reply{err: errTooLate}
		}
		return setNX(ctx, n, []any{"set", m.args.key, value, "px", px, "nx"})
	}
}

// statusCall reads the lock's value, its PTTL and its live waiters on a node.
func (m *Mutex) statusCall() nodeCall {
	status := prepare(statusScript, m.args.releaseKeys, maxStatusWaiters)
	return func(ctx context.Context, n *node) reply {
		res, err := status.run(ctx, n).Slice()
		if err == nil && len(res) != 3 {
			err = fmt.Errorf("status script returned %d values; want 3", len(res))
		}
		if err != nil {
			return reply{err: err}
		}
		value, _ := res[0].(string)
		pttl, _ := res[1].(int64)
		live, _ := res[2].(int64)
		ttl := time.Duration(pttl) * time.Millisecond
		switch {
		case value == "":
			ttl = 0
		case pttl == -1: // no expiry
			ttl = math.MaxInt64
		}
		return reply{ok: true, holder: value, ttl: ttl, waiters: int(live)}
	}
}

// identifyCall writes the node's index under the Client's mark, unless
// another node of the Client reached the same server first; the reply's
// counter is the index of the node that wrote the mark.
func (c *Client) identifyCall() nodeCall {
	mark := c.cfg.keyPrefix + identitySuffix + c.notifier.id
	return func(ctx context.Context, n *node) reply {
		identify := prepare(identifyScript, []any{mark}, n.index, identityTTL.Milliseconds())
		first, err := identify.run(ctx, n).Int64()
		return reply{ok: err == nil, counter: uint64(first), err: err}
	}
}

// identityTTL is how long a Client's mark lasts on a server.
const identityTTL = time.Minute
