//go:build review2

// Failing reproductions from the second review of the identity check,
// kept for the fix: go test -tags review2 -run TestReview .

package redlock

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Node 0 is a ClusterClient over two masters S1 and S2 (slots 0-8191 on S1);
// node 1 is a plain client to S1; node 2 is S3. go-redis's ClusterClient
// SCRIPT LOADs on every shard and ANDs SCRIPT EXISTS over the shards, so if
// node 1 checks first, node 0 finds node 1's fingerprint on S1 only and
// reports false: both are verified, and S1 counts twice.
func TestReviewClusterTwinUndetected(t *testing.T) {
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
	// node timeout and the grace).
	c, err := New([]redis.UniversalClient{cc, p1, p3}, WithLogger(discard()), WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A name whose key is in slots 0-8191, on S1.
	var name string
	for i := 0; ; i++ {
		name = "n" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if slotOf("redlock:{"+name+"}") <= 8191 {
			break
		}
	}
	m := c.NewMutex(name)
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	m.Unlock()
	settle(t, c.nodes)
	t.Logf("verified: %v %v %v, err %v", c.nodes[0].verified.Load(), c.nodes[1].verified.Load(), c.nodes[2].verified.Load(), c.identity.err)
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer m.UnlockContext(context.Background())
	s3.Close() // node 2, the only other server of the key, is gone
	time.Sleep(3 * time.Second)
	st, serr := m.Status(t.Context())
	t.Logf("Status with only S1 (and S2) up: %+v, %v", st, serr)
	if held.Err() == nil {
		t.Fatalf("the lock is still held 3 TTLs after S3 died, with only S1 holding the key: nodes 0 (cluster) and 1 (S1) both counted in extensions")
	}
}

func slotOf(key string) int {
	if i := indexByte(key, '{'); i >= 0 {
		if j := indexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % 16384)
}

func indexByte(s string, b byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return i
		}
	}
	return -1
}

func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for j := 0; j < 8; j++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
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
