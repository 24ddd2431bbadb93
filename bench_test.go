package redlock

import (
	"context"
	"testing"
	"time"
)

// benchClient is a Client over n nodes whose calls answer at once, without
// Redis, so that benchmarks measure the fan-out machinery alone.
func benchClient(n int) *Client {
	c := &Client{cfg: defaultConfig(), closing: make(chan struct{}), closed: make(chan struct{})}
	for i := range n {
		c.nodes = append(c.nodes, newNode(i, "", nil, c.closing))
	}
	c.watchdog = newWatchdog(c)
	c.notifier = newNotifier(c)
	return c
}

func instantOK(context.Context, *node, liveness) reply[none] { return reply[none]{ok: true} }

// BenchmarkFanOut measures one round's overhead: goroutines, timers,
// contexts and the outcome.
func BenchmarkFanOut(b *testing.B) {
	for _, n := range []int{1, 3, 5} {
		b.Run(map[int]string{1: "nodes=1", 3: "nodes=3", 5: "nodes=5"}[n], func(b *testing.B) {
			c := benchClient(n)
			defer c.Close()
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if out := fanOut(c, ctx, time.Second, instantOK); !out.won {
					b.Fatal("round lost")
				}
			}
		})
	}
}

// benchMutex returns a Mutex over n embedded servers, whose Client closes
// when the benchmark ends.
func benchMutex(b *testing.B, n int) *Mutex {
	b.Helper()
	_, clients := servers(b, n)
	c, err := New(clients)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c.NewMutex("bench")
}

// BenchmarkLockUnlockEmbedded measures a whole Lock+Unlock cycle on three
// embedded servers. The embedded servers run in this process, so its
// allocations count theirs too; the benchmarks module measures against
// real redis-server processes.
func BenchmarkLockUnlockEmbedded(b *testing.B) {
	m := benchMutex(b, 3)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.LockContext(ctx); err != nil {
			b.Fatal(err)
		}
		if err := m.UnlockContext(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDo measures Do's cycle against the LockContext and UnlockContext
// cycle it wraps, on three embedded servers.
func BenchmarkDo(b *testing.B) {
	m := benchMutex(b, 3)
	ctx := context.Background()
	b.Run("LockContext+UnlockContext", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			held, err := m.LockContext(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := held.Err(); err != nil {
				b.Fatal(err)
			}
			if err := m.UnlockContext(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Do", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := m.Do(ctx, func(held context.Context) error { return held.Err() }); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkReleaseCall compares the release call as redlock makes it, a
// prepared EVALSHA whose arguments every node call shares, with
// redis.Script.Run, which boxes the keys and arguments again for every node
// call. The embedded server runs in this process, so the allocations
// include its own; only the difference between the two is the client's.
func BenchmarkReleaseCall(b *testing.B) {
	m := benchMutex(b, 1)
	n := m.client.nodes[0]
	ctx := context.Background()
	b.Run("prepared", func(b *testing.B) {
		call := m.kind.release("value", "", true)
		b.ReportAllocs()
		for b.Loop() {
			if rep := call(ctx, n, nil); rep.err != nil {
				b.Fatal(rep.err)
			}
		}
	})
	b.Run("redis.Script", func(b *testing.B) {
		keys := []string{m.key, m.key + queueSuffix, m.key + aliveSuffix}
		b.ReportAllocs()
		for b.Loop() {
			if err := releaseScript.Run(ctx, n.client, keys, "value", wakeChannelPrefix, "").Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
