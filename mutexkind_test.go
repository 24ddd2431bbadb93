package redlock

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// A SET NX sent again after an EOF does not mistake our own grant
// for a refusal.
func TestResentGrantIsRecognised(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 14)
	c := newClient(t, clients)
	m := c.NewMutex("resent")
	mrs[1].Set(m.key, "other")
	mrs[2].Set(m.key, "other")
	// Node 0 grants, then the connection breaks before the reply; the
	// other nodes answer after it.
	hooks[0].add(&fault{match: isKind("acquire"), eof: true, times: 1})
	hooks[1].add(&fault{match: isKind("acquire"), after: 50 * time.Millisecond, times: 1})
	hooks[2].add(&fault{match: isKind("acquire"), after: 50 * time.Millisecond, times: 1})
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryLockContext = %v; want ErrNotAcquired", err)
	}
	waitFor(t, "node 0 to lose the failed attempt's key", func() bool { return !mrs[0].Exists(m.key) })
}

// A server that lost its script cache (a restart, SCRIPT FLUSH) gets the
// scripts again with EVAL: prepared.run relies on go-redis reporting
// NOSCRIPT as an error with that prefix.
func TestScriptsAreSentAgainWhenTheServerLostThem(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithFencing())
	m := c.NewMutex("flushed")
	m.Lock()
	m.Unlock()
	for _, rc := range clients {
		if err := rc.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatalf("LockContext after SCRIPT FLUSH = %v; want the scripts sent again", err)
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatalf("UnlockContext after SCRIPT FLUSH = %v", err)
	}
	settle(t, c.nodes)
	if n := keysOn(mrs, m.key); n != 0 {
		t.Errorf("%d nodes still have the key", n)
	}
}

// breakAfterNX is a go-redis dial hook: on the first connection that
// writes a grant (a SET ... NX, or the acquire script), the command reaches
// the server and runs, then the connection breaks before the reply is read
// (io.EOF), as when a server or proxy drops a connection.
type breakAfterNX struct{ broke atomic.Bool }

func (b *breakAfterNX) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &nxConn{Conn: conn, b: b}, nil
	}
}

func (b *breakAfterNX) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (b *breakAfterNX) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

type nxConn struct {
	net.Conn
	b      *breakAfterNX
	broken atomic.Bool
}

func (c *nxConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	grant := bytes.Contains(p, []byte("\r\nnx\r\n")) || bytes.Contains(p, []byte(acquireScript.Hash()))
	if err == nil && grant && c.b.broke.CompareAndSwap(false, true) {
		time.Sleep(20 * time.Millisecond) // the server runs it
		c.broken.Store(true)
	}
	return n, err
}

func (c *nxConn) Read(p []byte) (int, error) {
	if c.broken.Load() {
		return 0, io.EOF
	}
	return c.Conn.Read(p)
}

// With a client that retries by itself (go-redis's default MaxRetries), a
// SET NX whose connection broke after it ran is sent again by go-redis, and
// the second copy finds the key the first set. Such nodes get the acquire
// script, which knows the key for its own, so the failed attempt releases
// it.
func TestGrantHiddenByGoRedisRetriesIsReleased(t *testing.T) {
	mrs, clients := servers(t, 3)
	plain := redis.NewClient(&redis.Options{Addr: mrs[2].Addr(), ContextTimeoutEnabled: true}) // default MaxRetries
	t.Cleanup(func() { plain.Close() })
	// The script is loaded, so that the first EVALSHA runs it.
	if err := acquireScript.Load(t.Context(), clients[2]).Err(); err != nil {
		t.Fatal(err)
	}
	breaker := &breakAfterNX{}
	plain.AddHook(breaker)
	c := newClient(t, []redis.UniversalClient{clients[0], clients[1], plain}, WithLogger(slog.New(&records{})))
	m := c.NewMutex("hidden")
	// Another owner holds the lock on nodes 0 and 1: the attempt fails.
	mrs[0].Set(m.key, "someone else")
	mrs[1].Set(m.key, "someone else")
	if m.TryLock() {
		t.Fatal("TryLock succeeded")
	}
	settle(t, c.nodes)
	if !breaker.broke.Load() {
		t.Fatal("no grant's connection broke: not reproduced")
	}
	time.Sleep(100 * time.Millisecond)
	if mrs[2].Exists(m.key) {
		v, _ := mrs[2].Get(m.key)
		t.Errorf("node 2 keeps the failed attempt's key %q (TTL %v) after the attempt was abandoned; it got no release", v, mrs[2].TTL(m.key))
	}
}

// A release whose connection breaks after it ran is sent again, finds the
// key gone, and does not make Unlock report a loss.
func TestResentReleaseDoesNotReportALoss(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 16)
	c := newClient(t, clients, WithLogger(slog.New(&records{})))
	warm(t, c)
	m := c.NewMutex("resent-release")
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks[1:] {
		h.add(&fault{match: isKind("release"), eof: true, times: 1})
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Errorf("UnlockContext of a lock held until Unlock: %v", err)
	}
}

// noPerm is a Redis error reply, as a server sends for a command the ACL
// user may not run.
type noPerm string

func (e noPerm) Error() string { return string(e) }
func (noPerm) RedisError()     {}

// TestScriptsDeniedFailTheFirstAcquisition checks that an ACL user who may
// not run scripts cannot take a lock it could neither extend nor release:
// the first acquisition on each node goes through the acquire script, whose
// denial is an error that retrying cannot fix.
func TestScriptsDeniedFailTheFirstAcquisition(t *testing.T) {
	for _, denial := range []string{
		"NOPERM User noscripts has no permissions to run the 'evalsha' command",
		// Redis 7's reply when the script runs but a command in it is denied
		"ERR The user executing the script can't run this command or subcommand script: a3916af3, on @user_script:21.",
	} {
		mrs, clients, hooks := faultyServers(t, 3, 1)
		for _, h := range hooks {
			h.add(&fault{match: func(c call) bool { return c.name == "evalsha" || c.name == "eval" }, fail: noPerm(denial)})
		}
		c := newClient(t, clients)
		m := c.NewMutex("denied")
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := m.LockContext(ctx)
		cancel()
		if err == nil || !errors.Is(err, ErrNoQuorum) || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), denial) {
			t.Fatalf("LockContext with scripts denied = %v; want ErrNoQuorum with %q, at once", err, denial)
		}
		if msg := panicMessage(m.Lock); !strings.Contains(msg, denial) {
			t.Errorf("Lock with scripts denied panicked with %q; want the denial", msg)
		}
		settle(t, c.nodes)
		if n := keysOn(mrs, m.key); n != 0 {
			t.Errorf("key on %d nodes after the denied acquisitions; want 0", n)
		}
	}
}
