package redlock

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Node 0 is a ClusterClient over two masters S1 and S2 (slots 0-8191 on S1);
// node 1 is a plain client to S1; node 2 is S3. The check asks every shard
// of a Cluster client, and finds node 1's fingerprint on S1. (From the
// second review: go-redis's ClusterClient ANDs SCRIPT EXISTS over the
// shards, so node 0 reported false for node 1's fingerprint, both were
// verified, and S1 counted twice.)
func TestClusterTwinIsFound(t *testing.T) {
	s1, s2, s3 := miniredis.RunT(t), miniredis.RunT(t), miniredis.RunT(t)
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		ClusterSlots: func(context.Context) ([]redis.ClusterSlot, error) {
			return []redis.ClusterSlot{
				{Start: 0, End: 8191, Nodes: []redis.ClusterNode{{Addr: s1.Addr()}}},
				{Start: 8192, End: 16383, Nodes: []redis.ClusterNode{{Addr: s2.Addr()}}},
			}, nil
		},
		ContextTimeoutEnabled: true, MaxRetries: -1,
	})
	p1 := redis.NewClient(&redis.Options{Addr: "localhost:" + s1.Port(), ContextTimeoutEnabled: true, MaxRetries: -1})
	p3 := redis.NewClient(&redis.Options{Addr: s3.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	cc.AddHook(delayScript{30 * time.Millisecond})
	t.Cleanup(func() { cc.Close(); p1.Close(); p3.Close() })
	// Node 0 is a little slower to be checked than node 1 (well within the
	// node timeout and the grace): it asks after node 1 has loaded.
	c, err := New([]redis.UniversalClient{cc, p1, p3}, WithLogger(discard()), WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m := c.NewMutex("cluster")
	_, err = m.TryLockContext(t.Context())
	if err == nil {
		m.Unlock()
		t.Fatalf("TryLockContext succeeded: nodes 0 (a Cluster client, one of whose shards is S1) and 1 (S1) both counted; verified %v", c.identity.verified())
	}
	if !strings.Contains(err.Error(), "nodes 0 and 1 reach the same server") {
		t.Fatalf("TryLockContext = %v; want an error naming nodes 0 and 1", err)
	}
}

// delayScript delays SCRIPT commands at the ClusterClient's level.
type delayScript struct{ d time.Duration }

func (delayScript) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h delayScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "script" {
			time.Sleep(h.d)
		}
		return next(ctx, cmd)
	}
}
func (delayScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
