package redlock

import (
	"context"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"slices"

	"github.com/redis/go-redis/v9"
)

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

	acquireScript = newScript(acquireSource)
	fenceScript   = newScript(fenceSource)
	enqueueScript = newScript(enqueueSource)
	extendScript  = newScript(extendSource)
	releaseScript = newScript(releaseSource)
)

// script is a Lua script run with EVALSHA, falling back to EVAL when a
// server does not have it cached yet.
type script struct {
	source, hash string
}

func newScript(source string) *script {
	sum := sha1.Sum([]byte(source))
	return &script{source: source, hash: hex.EncodeToString(sum[:])}
}

// prepared is a script with its keys and arguments, as the arguments of one
// EVALSHA command. A round builds it once and every node call shares it: the
// calls only read it, which saves boxing the keys and arguments for each node.
type prepared struct {
	script *script
	args   []any
}

func (s *script) prepare(keys []any, argv ...any) prepared {
	args := make([]any, 0, 3+len(keys)+len(argv))
	args = append(args, "evalsha", s.hash, len(keys))
	args = append(args, keys...)
	return prepared{script: s, args: append(args, argv...)}
}

// run runs the script on n.
func (p prepared) run(ctx context.Context, n *node) *redis.Cmd {
	cmd := send(ctx, n, redis.NewCmd, p.args)
	if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		args := slices.Clone(p.args)
		args[0], args[1] = "eval", p.script.source
		cmd = send(ctx, n, redis.NewCmd, args)
	}
	return cmd
}
