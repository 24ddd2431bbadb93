package redlock

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func TestDial(t *testing.T) {
	c, err := Dial(nil)
	if err != nil {
		t.Fatalf("Dial(nil): %v", err)
	}
	if len(c.nodes) != 1 || c.nodes[0].addr != "127.0.0.1:6379" {
		t.Errorf("Dial(nil) nodes = %d, first at %q; want 1 at 127.0.0.1:6379", len(c.nodes), c.nodes[0].addr)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}

	if _, err := Dial([]string{"redis://127.0.0.1:1/0", "http://nope"}); err == nil || !strings.Contains(err.Error(), "URL 1") {
		t.Errorf("Dial with a bad URL error = %v; want it to name URL 1", err)
	}
	if _, err := Dial([]string{"redis://127.0.0.1:1/0", "redis://127.0.0.1:1/2"}); err == nil || !strings.Contains(err.Error(), "both use address") {
		t.Errorf("Dial with one server twice error = %v; want a duplicate-address error", err)
	}
}

func TestDialedClientSurvivesServerRestarts(t *testing.T) {
	mrs, _ := servers(t, 3)
	var urls []string
	for _, mr := range mrs {
		urls = append(urls, "redis://"+mr.Addr()+"/0")
	}
	c, err := Dial(urls)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Fill the pools with several connections to each server: locks taken
	// at the same time use one each.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			m := c.NewMutex(fmt.Sprintf("fill-%d", i))
			m.Lock()
			m.Unlock()
		})
	}
	wg.Wait()
	settle(t, c.nodes)
	m := c.NewMutex("restarts")
	for _, mr := range mrs {
		mr.Close()
		if err := mr.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	// Every pooled connection is dead; a command on one fails with EOF and
	// is sent again, until it finds a new connection.
	if _, err := m.TryLockContext(t.Context()); err != nil {
		t.Fatalf("TryLockContext after every server restarted = %v; want the lock", err)
	}
	m.Unlock()
}

// The connections Dial makes skip go-redis's liveness probe, and send
// counts on go-redis reporting a dead pooled connection as io.EOF, without
// a retry of its own: these tests pin both behaviours of go-redis.
func TestGoRedisReportsADeadUnprobedConnectionAsEOF(t *testing.T) {
	mr := miniredis.RunT(t)
	c, err := Dial([]string{"redis://" + mr.Addr() + "/0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc := c.nodes[0].client
	if err := rc.Ping(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	mr.Close()
	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Ping(t.Context()).Err(); !errors.Is(err, io.EOF) {
		t.Errorf("first command on a pooled connection the server closed = %v; want io.EOF", err)
	}
	if err := rc.Ping(t.Context()).Err(); err != nil {
		t.Errorf("second command = %v; want a new connection and an answer", err)
	}
}

func TestGoRedisProbesTheConnectionsItDials(t *testing.T) {
	mr := miniredis.RunT(t)
	rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	defer rc.Close()
	if err := rc.Ping(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	mr.Close()
	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	// The probe finds the dead connection before the command is sent.
	if err := rc.Ping(t.Context()).Err(); err != nil {
		t.Errorf("first command after a restart, with go-redis's own dialer = %v; want the probe to have replaced the connection", err)
	}
}
