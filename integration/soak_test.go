package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

// TestSoakLeavesNoKeys runs Clients that lock and unlock four locks while
// servers are paused for 50-400ms, and killed and restarted (without
// persistence) after the TTL. Once every Client is closed, no lock key may
// be left: a grant, repair or release whose reply never came back, and
// which a paused server ran after the release sent for it, must still be
// released. REDLOCK_SOAK sets the length (default 10s).
func TestSoakLeavesNoKeys(t *testing.T) {
	begin(t)
	redis.SetLogger(quietLogger{})
	length := 10 * time.Second
	if raw := os.Getenv("REDLOCK_SOAK"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil {
			t.Fatalf("REDLOCK_SOAK=%q: %v", raw, err)
		}
		length = d
	}
	const ttl = time.Second
	names := []string{"soak-a", "soak-b", "soak-c", "soak-d"}
	stop := time.Now().Add(length)
	var clients []*redlock.Client
	var workers sync.WaitGroup
	for i := range 4 {
		opts := []redlock.Option{redlock.WithTTL(ttl), redlock.WithRetryDelay(5 * time.Millisecond), redlock.WithRetryJitter(10 * time.Millisecond),
			redlock.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}
		if i%2 == 0 {
			opts = append(opts, redlock.WithFencing())
		}
		c, err := redlock.Dial(suite.urls(nodeCount), opts...)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		for range 2 {
			workers.Go(func() { soakWorker(c, names, stop) })
		}
	}
	faults := soakFaults(t, stop, ttl)
	workers.Wait()
	faults.Wait()
	for _, c := range clients {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	var left []string
	for i, rc := range suite.clients(t, nodeCount) {
		for _, name := range names {
			key := "redlock:{" + name + "}"
			if pttl, err := rc.PTTL(t.Context(), key).Result(); err == nil && pttl != -2*time.Nanosecond && pttl >= 0 {
				left = append(left, fmt.Sprintf("server %d: %s, expiring in %v", i, key, pttl))
			}
		}
	}
	if len(left) > 0 {
		t.Errorf("%d lock keys left after every Client closed:\n%s", len(left), strings.Join(left, "\n"))
	}
}

// soakWorker locks random locks of names until stop.
func soakWorker(c *redlock.Client, names []string, stop time.Time) {
	for time.Now().Before(stop) {
		m := c.NewMutex(names[rand.IntN(len(names))])
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := m.LockContext(ctx)
		cancel()
		if err != nil {
			continue
		}
		time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
		m.Unlock()
	}
}

// soakFaults pauses a random server for 50-400ms at a time until stop, and
// every few seconds kills one and starts it again, empty, after the TTL.
func soakFaults(t *testing.T, stop time.Time, ttl time.Duration) *sync.WaitGroup {
	var wg sync.WaitGroup
	var mu sync.Mutex // one fault at a time per server
	down := -1        // the server killed, if any
	wg.Go(func() {
		for time.Now().Before(stop) {
			mu.Lock()
			i := rand.IntN(nodeCount)
			if i == down {
				mu.Unlock()
				continue
			}
			id := suite.servers[i].resource.Container.ID
			if err := suite.pool.Client.PauseContainer(id); err != nil {
				t.Errorf("pause: %v", err)
				return
			}
			time.Sleep(time.Duration(50+rand.IntN(350)) * time.Millisecond)
			err := suite.pool.Client.UnpauseContainer(id)
			mu.Unlock()
			if err != nil {
				t.Errorf("unpause: %v", err)
				return
			}
			time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
		}
	})
	wg.Go(func() {
		for time.Now().Add(2 * ttl).Before(stop) {
			time.Sleep(2 * time.Second)
			i := rand.IntN(nodeCount)
			mu.Lock()
			err := suite.kill(i)
			down = i
			mu.Unlock()
			if err != nil {
				t.Error(err)
				return
			}
			time.Sleep(ttl + 100*time.Millisecond)
			mu.Lock()
			err = suite.restart(i)
			down = -1
			mu.Unlock()
			if err != nil {
				t.Error(err)
				return
			}
		}
	})
	return &wg
}
