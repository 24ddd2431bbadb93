package redlock

import (
	_ "embed"

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

	// The scripts run with EVALSHA, falling back to EVAL once per node when
	// the server does not have them cached yet.
	acquireScript = redis.NewScript(acquireSource)
	fenceScript   = redis.NewScript(fenceSource)
	enqueueScript = redis.NewScript(enqueueSource)
	extendScript  = redis.NewScript(extendSource)
	releaseScript = redis.NewScript(releaseSource)
)
