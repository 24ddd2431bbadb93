package redlock

import (
	"context"
	_ "embed"
	"slices"

	"github.com/redis/go-redis/v9"
)

// The library's Lua scripts, and how a call runs one on a node. Every key a
// script touches is named in its KEYS (see keys_test.go), so that a server
// that forbids undeclared keys and a Redis Cluster node both run it.

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
	//go:embed scripts/forget.lua
	forgetSource string
	//go:embed scripts/status.lua
	statusSource string
	//go:embed scripts/semacquire.lua
	semAcquireSource string
	//go:embed scripts/semstatus.lua
	semStatusSource string
	//go:embed scripts/semrepair.lua
	semRepairSource string
	//go:embed scripts/elect.lua
	electSource string
	//go:embed scripts/leader.lua
	leaderSource string

	acquireScript = newScript(acquireSource)
	fenceScript   = newScript(fenceSource)
	enqueueScript = newScript(enqueueSource)
	extendScript  = newScript(extendSource)
	releaseScript = newScript(releaseSource)
	forgetScript  = newScript(forgetSource)
	statusScript  = newScript(statusSource)

	semAcquireScript = newScript(semAcquireSource)
	semStatusScript  = newScript(semStatusSource)
	semRepairScript  = newScript(semRepairSource)

	electScript  = newScript(electSource)
	leaderScript = newScript(leaderSource)
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
// live is the call's, for send.
func (p prepared) run(ctx context.Context, n *node, live liveness) *redis.Cmd {
	cmd, _ := p.runResent(ctx, n, live)
	return cmd
}

// runResent is run, and also reports whether the call was sent more than
// once: an earlier copy, whose reply was lost, may have run.
func (p prepared) runResent(ctx context.Context, n *node, live liveness) (*redis.Cmd, bool) {
	cmd, resent := send(ctx, n, live, redis.NewCmd, p.args)
	if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		args := slices.Clone(p.args)
		args[0], args[1] = "eval", p.script.source
		var again bool
		cmd, again = send(ctx, n, live, redis.NewCmd, args)
		resent = resent || again
	}
	if err := cmd.Err(); (err == nil || err == redis.Nil) && !n.scriptsRun.Load() {
		n.scriptsRun.Store(true)
	}
	return cmd, resent
}

// flag is a script's boolean argument.
func flag(on bool) string {
	if on {
		return "1"
	}
	return "0"
}
