package redlock

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	redis.SetLogger(dialLogFilter{})
	// go-redis redials in the background once dials failed; the goroutine
	// ends within a second of its client's Close.
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

// dialLogFilter drops go-redis's reports of failed dials, which the tests
// that stop servers cause by the thousand, and prints the rest.
type dialLogFilter struct{}

func (dialLogFilter) Printf(_ context.Context, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if !strings.Contains(msg, "failed to dial") {
		log.Print("redis: ", msg)
	}
}

// servers starts n embedded Redis servers and returns clients to them.
func servers(t testing.TB, n int) ([]*miniredis.Miniredis, []redis.UniversalClient) {
	t.Helper()
	var mrs []*miniredis.Miniredis
	var clients []redis.UniversalClient
	for range n {
		mr := miniredis.RunT(t)
		rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
		t.Cleanup(func() { rc.Close() })
		mrs = append(mrs, mr)
		clients = append(clients, rc)
	}
	return mrs, clients
}

// newClient returns a Client over clients, closed when the test ends, whose
// nodes that answer within 200ms have passed the identity check already,
// so that the test's first acquisition asks every node (the first call of a
// fresh Client may go ahead without a node that is slow to be checked).
// Tests of the check itself use newFreshClient.
func newClient(t *testing.T, clients []redis.UniversalClient, opts ...Option) *Client {
	t.Helper()
	c := newFreshClient(t, clients, opts...)
	verifyAll(c)
	return c
}

// newFreshClient returns a Client over clients, closed when the test ends.
func newFreshClient(t *testing.T, clients []redis.UniversalClient, opts ...Option) *Client {
	t.Helper()
	c, err := New(clients, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// verifyAll waits for the identity check in flight, or runs one that waits
// for every node, with a node timeout of 200ms, and waits for it to end.
func verifyAll(c *Client) {
	c.mu.RLock()
	c.identity.mu.Lock()
	if c.identity.check == nil {
		c.startCheck(200*time.Millisecond, false)
	}
	ck := c.identity.check
	c.identity.mu.Unlock()
	c.mu.RUnlock()
	<-ck.done
	for _, n := range c.nodes {
		n.hung.Store(false) // the tests say which nodes hang, not the check
	}
}

// assumeVerified adds nodes of c to the verified set, as if they had
// passed the identity check before they hung.
func assumeVerified(c *Client, nodes ...int) {
	c.identity.mu.Lock()
	defer c.identity.mu.Unlock()
	set := slices.Clone(c.identity.verified())
	for _, i := range nodes {
		set[i] = true
	}
	c.identity.set.Store(&set)
}

// isVerified says whether node i of c is in the verified set.
func isVerified(c *Client, i int) bool { return c.identity.verified()[i] }

// settle waits until every call in flight to the nodes has finished, such
// as releases and grants that outlived the rounds that sent them.
func settle(t *testing.T, nodes []*node) {
	t.Helper()
	waitFor(t, "calls in flight to finish", func() bool {
		for _, n := range nodes {
			if n.inFlight.Load() != 0 {
				return false
			}
		}
		return true
	})
}

// keysOn counts the servers that have key.
func keysOn(mrs []*miniredis.Miniredis, key string) int {
	count := 0
	for _, mr := range mrs {
		if mr.Exists(key) {
			count++
		}
	}
	return count
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// overlaps records how many holders are inside a critical section at once.
type overlaps struct{ inside, most, sections atomic.Int32 }

// section runs a 1ms critical section under m.
func (o *overlaps) section(m *Mutex) {
	m.Lock()
	n := o.inside.Add(1)
	for {
		most := o.most.Load()
		if n <= most || o.most.CompareAndSwap(most, n) {
			break
		}
	}
	time.Sleep(time.Millisecond)
	o.inside.Add(-1)
	o.sections.Add(1)
	m.Unlock()
}

func (o *overlaps) check(t *testing.T, wantSections int32) {
	t.Helper()
	if got := o.most.Load(); got != 1 {
		t.Errorf("at most %d holders were inside at once; want 1", got)
	}
	if got := o.sections.Load(); got != wantSections {
		t.Errorf("%d critical sections ran; want %d", got, wantSections)
	}
}

// records is a slog handler that keeps the records it gets.
type records struct {
	mu   sync.Mutex
	list []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }

func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }

func (r *records) WithGroup(string) slog.Handler { return r }

func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, rec)
	return nil
}

// queueOf returns the ids queued for the lock on a server.
func queueOf(mr *miniredis.Miniredis, name string) []string {
	list, _ := mr.List("redlock:{" + name + "}" + queueSuffix)
	return list
}

// commandCounter is a go-redis hook that counts the commands sent: those
// named in only, if it is not nil, and runs of script, if it is not nil.
type commandCounter struct {
	only   map[string]bool
	script *script
	count  atomic.Int64
}

func (c *commandCounter) add(cmd redis.Cmder) {
	if c.only != nil && !c.only[cmd.Name()] {
		return
	}
	if c.script != nil {
		args := cmd.Args()
		if len(args) < 2 || (args[1] != c.script.hash && args[1] != c.script.source) {
			return
		}
	}
	c.count.Add(1)
}

func (*commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		c.add(cmd)
		return err
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			c.add(cmd)
		}
		return err
	}
}

// panicMessage runs f and returns what it panicked with, or "".
func panicMessage(f func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	f()
	return ""
}

// warm loads the library's scripts on the servers, so that no call needs
// a second try with EVAL, and runs one lock cycle, so that the pools have
// connections.
func warm(t *testing.T, c *Client) {
	t.Helper()
	for _, n := range c.nodes {
		for _, s := range []*script{acquireScript, fenceScript, releaseScript, extendScript, enqueueScript} {
			if err := s.Load(t.Context(), n.client).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	m := c.NewMutex("warm-up")
	m.Lock()
	m.Unlock()
	settle(t, c.nodes)
}

// valueOf returns the value of the holding whose held context is held.
func valueOf(_ *Mutex, held context.Context) string {
	return held.(*heldContext).l.value
}

// stopExpiryTimer stops the expiry timer of m's holding, as if it were late.
func stopExpiryTimer(m *Mutex) {
	h := m.current.Load()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.timer.t.Stop()
}

// gateHandler is a slog handler that blocks the goroutine logging a record
// whose message contains match until open is closed. It only widens the
// window between a holding turning lost and lose() scheduling its release.
type gateHandler struct {
	match   string
	entered chan struct{}
	open    chan struct{}
}

func (g *gateHandler) Enabled(context.Context, slog.Level) bool { return true }

func (g *gateHandler) WithAttrs([]slog.Attr) slog.Handler { return g }

func (g *gateHandler) WithGroup(string) slog.Handler { return g }

func (g *gateHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, g.match) {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-g.open
	}
	return nil
}
