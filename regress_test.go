package redlock

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Bug 1: a grant that lands while the fencing round fails is released.
func TestFailedFencingRoundReleasesALateGrant(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 1)
	c := newClient(t, clients, WithFencing())
	warm(t, c)
	// Node 2 grants at once, but its reply comes 100ms late, while the
	// fencing round, which fails on nodes 0 and 1 after 150ms, is running.
	hooks[2].add(&fault{match: isKind("acquire"), after: 100 * time.Millisecond, times: 1})
	for _, h := range hooks[:2] {
		h.add(&fault{match: isKind("fence"), before: 150 * time.Millisecond, fail: errors.New("LOADING simulated"), times: 1})
	}
	m := c.NewMutex("fenced")
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrNotAcquired) {
		t.Fatalf("TryLockContext = %v; want ErrNotAcquired", err)
	}
	waitFor(t, "the failed attempt's keys to go", func() bool { return keysOn(mrs, m.key) == 0 })
}

// warm loads the library's scripts on the servers, so that no call needs
// a second try with EVAL, and runs one lock cycle, so that the pools have
// connections.
func warm(t *testing.T, c *Client) {
	t.Helper()
	for _, n := range c.nodes {
		for _, s := range []*redis.Script{acquireScript, fenceScript, releaseScript, extendScript, enqueueScript, identifyScript} {
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

// Bug 2: replies to an extension that land after the lock was lost neither
// keep the lock alive nor repair it.
func TestLostLockIsNotExtendedOrRepaired(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 2)
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(400*time.Millisecond))
	other := newClient(t, clients, WithTTL(time.Second))
	warm(t, c)
	m := c.NewMutex("late")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	value := valueOf(m, held)
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	// Node 0 lost the key, so a won extension would repair it. Nodes 1 and
	// 2 run every extension just after the lock's expiry timer fires.
	mrs[0].Del(m.key)
	landing := m.Until().Add(30 * time.Millisecond)
	for _, h := range hooks[1:] {
		h.add(&fault{match: isKind("extend"), notBefore: landing})
	}
	<-held.Done()
	lostAt := time.Now()
	if cause := context.Cause(held); !errors.Is(cause, ErrLockLost) {
		t.Fatalf("Cause(held) = %v; want ErrLockLost", cause)
	}
	// Another Client gets the lock well before a TTL has passed.
	ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
	defer cancel()
	if _, err := other.NewMutex("late").LockContext(ctx); err != nil {
		t.Errorf("another Client could not take the lock within 700ms of its loss: %v", err)
	} else {
		t.Logf("another Client took the lock %v after the loss", time.Since(lostAt))
	}
	for _, h := range hooks {
		for _, call := range h.sent(isKind("extend", "acquire", "repair", "set")) {
			if call.at.After(lostAt) && slicesContains(call.values, value) {
				t.Errorf("node %d: %s sent %v after the lock was lost", call.node, call.kind, call.at.Sub(lostAt))
			}
		}
	}
	m.Unlock()
}

func slicesContains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Bug 4: the first extension is due one interval after the acquisition
// round started, not after it ended.
func TestFirstExtensionIsTimedFromTheRoundStart(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 4)
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(488*time.Millisecond), WithWatchdogInterval(500*time.Millisecond))
	warm(t, c)
	for _, h := range hooks {
		h.add(&fault{match: isKind("acquire"), after: 300 * time.Millisecond, times: 1})
		h.add(&fault{match: isKind("extend"), after: 350 * time.Millisecond})
	}
	m := c.NewMutex("slow")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.Done():
		t.Errorf("lock lost though every node answered within its timeout: %v", context.Cause(held))
	case <-time.After(1500 * time.Millisecond):
	}
	m.Unlock()
}

// Bug 5: keys that failed attempts of other contenders left for a moment
// do not make a waiter sleep as if the lock were held.
func TestLeftoverKeysOfFailedAttemptsDoNotStallAWaiter(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithRetryDelay(200*time.Millisecond), WithRetryJitter(0))
	m := c.NewMutex("split")
	// Two contenders each won one node, lost, and are undoing it.
	mrs[0].Set(m.key, "contender-a")
	mrs[1].Set(m.key, "contender-b")
	time.AfterFunc(20*time.Millisecond, func() {
		mrs[0].Del(m.key)
		mrs[1].Del(m.key)
	})
	start := time.Now()
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Queued behind a holder, the waiter would sleep ten retry delays: 2s.
	if waited := time.Since(start); waited > time.Second {
		t.Errorf("acquired %v after the leftover keys went; want about one retry delay (200ms)", waited)
	}
	m.Unlock()
}

// Bug 6: a name or prefix that would break the hash tag is rejected.
func TestBrokenHashTagsAreRejected(t *testing.T) {
	_, clients := servers(t, 1)
	c := newClient(t, clients)
	for _, tt := range []struct {
		name string
		m    *Mutex
	}{
		{"name starting with }", c.NewMutex("}x")},
		{"name with {", c.NewMutex("a{b")},
		{"prefix ending with {}", c.NewMutex("x", WithKeyPrefix("app{}"))},
	} {
		if _, err := tt.m.TryLockContext(t.Context()); err == nil || !strings.Contains(err.Error(), "hash tag") {
			t.Errorf("%s: TryLockContext = %v; want an error naming the hash tag", tt.name, err)
		}
	}
	if _, err := New(clients, WithKeyPrefix("a}")); err == nil || !strings.Contains(err.Error(), "hash tag") {
		t.Errorf("New with prefix %q = %v; want an error naming the hash tag", "a}", err)
	}
}

// Bug 7: a nil context panics with a redlock: message, in the caller.
func TestNilContextPanics(t *testing.T) {
	_, clients := servers(t, 1)
	m := newClient(t, clients).NewMutex("nil")
	//lint:ignore SA1012 the point of the test
	var nilCtx context.Context
	for name, f := range map[string]func(){
		"LockContext":    func() { m.LockContext(nilCtx) },
		"TryLockContext": func() { m.TryLockContext(nilCtx) },
		"UnlockContext":  func() { m.UnlockContext(nilCtx) },
	} {
		if msg := panicMessage(f); !strings.HasPrefix(msg, "redlock: ") || !strings.Contains(msg, "nil") {
			t.Errorf("%s(nil) panicked with %q; want a redlock: message about the nil context", name, msg)
		}
	}
}

// Bug 8: go.mod and the README name the same Go version.
func TestREADMEGoVersionMatchesGoMod(t *testing.T) {
	mod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
	got := regexp.MustCompile(`Requires Go (\d+\.\d+) or later`).FindSubmatch(readme)
	if want == nil || got == nil || string(got[1]) != string(want[1]) {
		t.Errorf("README requires Go %s; go.mod says %s", got, want)
	}
}

// Bug 9: Unlock waits for an extension in flight before it releases.
func TestUnlockWaitsForAnExtensionInFlight(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 9)
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(400*time.Millisecond))
	warm(t, c)
	var mu sync.Mutex
	var extendsRan []time.Time
	for _, h := range hooks {
		h.add(&fault{match: isKind("extend"), before: 150 * time.Millisecond})
		h.onRun = func(c call, at time.Time) {
			if c.kind == "extend" {
				mu.Lock()
				extendsRan = append(extendsRan, at)
				mu.Unlock()
			}
		}
	}
	m := c.NewMutex("inflight")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	value := valueOf(m, held)
	waitFor(t, "an extension to be sent", func() bool { return len(hooks[0].sent(isKind("extend"))) > 0 })
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	settle(t, c.nodes)
	// The round is decided once a quorum has extended the lock: every
	// release comes after that. A call to the last node may still be in
	// flight, and land after the release, where it finds no key to extend.
	mu.Lock()
	defer mu.Unlock()
	for _, h := range hooks {
		for _, rel := range h.sent(isKind("release")) {
			if !slicesContains(rel.values, value) {
				continue
			}
			before := 0
			for _, ran := range extendsRan {
				if ran.Before(rel.at) {
					before++
				}
			}
			if before < 2 {
				t.Errorf("node %d: release sent when %d nodes had run the extension in flight; want a quorum, 2", rel.node, before)
			}
		}
	}
}

// Bug 9: Unlock waits for a repair in flight, so that the repair cannot
// set the key again after Unlock returned.
func TestUnlockWaitsForARepairInFlight(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 19)
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(400*time.Millisecond))
	warm(t, c)
	m := c.NewMutex("repairing")
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	var mu sync.Mutex
	var repairsRan []time.Time
	hooks[0].add(&fault{match: isRepair, before: 150 * time.Millisecond})
	hooks[0].onRun = func(c call, at time.Time) {
		if isRepair(c) {
			mu.Lock()
			repairsRan = append(repairsRan, at)
			mu.Unlock()
		}
	}
	mrs[0].Del(m.key)
	waitFor(t, "a repair to be sent", func() bool { return len(hooks[0].sent(isRepair)) > 0 })
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	unlocked := time.Now()
	settle(t, c.nodes)
	mu.Lock()
	defer mu.Unlock()
	for _, ran := range repairsRan {
		if ran.After(unlocked) {
			t.Errorf("a repair set the key %v after Unlock returned", ran.Sub(unlocked))
		}
	}
}

// isRepair matches the commands that put the key back on a node that lost
// it.
func isRepair(c call) bool { return c.kind == "repair" }

// Bug 10: a repaired key lives no longer than the validity the quorum
// confirmed, however long the SET waited to be sent.
func TestRepairedKeyEndsWithTheValidity(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 10)
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(400*time.Millisecond))
	warm(t, c)
	m := c.NewMutex("repaired")
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	type ran struct {
		at     time.Time
		px     int64
		until  time.Time
		inTime bool
	}
	var mu sync.Mutex
	var runs []ran
	hooks[0].add(&fault{match: isRepair, before: 300 * time.Millisecond, times: 1})
	hooks[0].onRun = func(c call, at time.Time) {
		if isRepair(c) {
			mu.Lock()
			runs = append(runs, ran{at: at, px: c.px, until: m.Until()})
			mu.Unlock()
		}
	}
	mrs[0].Del(m.key)
	waitFor(t, "a repair to run", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(runs) > 0
	})
	m.Unlock()
	mu.Lock()
	defer mu.Unlock()
	for _, r := range runs {
		if end := r.at.Add(time.Duration(r.px) * time.Millisecond); end.After(r.until) {
			t.Errorf("repaired key lives until %v after the confirmed validity", end.Sub(r.until))
		}
	}
}

// Bug 11: the id of a waiter whose process died does not absorb a wake-up.
func TestDeadWaiterDoesNotAbsorbAWakeUp(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithRetryDelay(10 * time.Second), WithRetryJitter(0)}
	holder := newClient(t, clients, opts...).NewMutex("dead")
	holder.Lock()
	// A waiter of a process that died is first in the queue.
	for _, mr := range mrs {
		mr.Lpush(holder.key+queueSuffix, "deadclient.deadwaiter")
	}
	waiter := newClient(t, clients, opts...).NewMutex("dead")
	got := make(chan struct{})
	go func() {
		waiter.Lock()
		close(got)
	}()
	waitFor(t, "the waiter to queue", func() bool { return len(queueOf(mrs[0], "dead")) == 2 })
	holder.Unlock()
	select {
	case <-got:
		waiter.Unlock()
	case <-time.After(3 * time.Second):
		t.Fatal("the waiter was not woken within 3s of the release; the dead waiter took its wake-up")
	}
}

// Bug 14: a SET NX sent again after an EOF does not mistake our own grant
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

// Bug 15: a context derived from held sees that the validity ended even
// when the expiry timer is late.
func TestDerivedContextSeesTheValidityEnd(t *testing.T) {
	mrs, clients := servers(t, 3)
	m := newClient(t, clients, WithTTL(time.Second)).NewMutex("derived")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stopExpiryTimer(m)
	mrs[0].SetError("LOADING simulated")
	mrs[1].SetError("LOADING simulated")
	defer mrs[0].SetError("")
	defer mrs[1].SetError("")
	time.Sleep(time.Until(m.Until()) + 10*time.Millisecond)
	derived, cancel := context.WithCancel(held)
	defer cancel()
	if err := derived.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("Err() of a context derived from held after the validity ended = %v; want Canceled", err)
	}
	if cause := context.Cause(derived); !errors.Is(cause, ErrLockLost) {
		t.Errorf("Cause of the derived context = %v; want ErrLockLost", cause)
	}
	m.Unlock()
}

// Bug 16: two failover clients (or any clients whose address New cannot
// see) of one server are caught before they count twice.
func TestClientsOfOneServerAreCaughtAtFirstUse(t *testing.T) {
	mrs, clients := servers(t, 2)
	same := redis.NewClient(&redis.Options{Addr: mrs[0].Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { same.Close() })
	// Wrapped, the clients hide their address, as a failover client does.
	c := newClient(t, []redis.UniversalClient{opaque{clients[0]}, clients[1], opaque{same}})
	_, err := c.NewMutex("twice").TryLockContext(t.Context())
	if err == nil || !strings.Contains(err.Error(), "same server") {
		t.Errorf("TryLockContext over one server reached twice = %v; want an error naming the same server", err)
	}
}

// opaque hides the type of a client.
type opaque struct{ redis.UniversalClient }

// Bug 17: no "retrying" is logged when it is the wait itself that ended.
func TestNoRetryLoggedWhenTheWaitEnds(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 17)
	log := &records{}
	c := newClient(t, clients, WithLogger(slog.New(log)))
	warm(t, c)
	for _, h := range hooks {
		h.add(&fault{match: isKind("acquire"), after: 200 * time.Millisecond})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.NewMutex("ended").LockContext(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockContext = %v; want DeadlineExceeded", err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, rec := range log.list {
		if strings.Contains(rec.Message, "retrying") {
			t.Errorf("logged %q though the wait had ended", rec.Message)
		}
	}
}

// Bug 18: a grant whose reply never came back, and which a paused server
// runs after the release sent for it, is released again once the server
// answers.
func TestGrantLandingAfterItsReleaseIsReleasedAgain(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 18)
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(100*time.Millisecond))
	warm(t, c)
	m := c.NewMutex("frozen")
	hooks[2].pause()
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	settle(t, c.nodes)
	// The server thaws and runs the release before the grant.
	hooks[2].resumeOrdered(func(held []*heldCommand) {
		for i, j := 0, len(held)-1; i < j; i, j = i+1, j-1 {
			held[i], held[j] = held[j], held[i]
		}
	})
	// Any call to the node shows it answers again.
	other := c.NewMutex("another")
	other.Lock()
	other.Unlock()
	waitFor(t, "the late grant to be released", func() bool { return !mrs[2].Exists(m.key) })
}

// valueOf returns the value of the holding whose held context is held.
func valueOf(_ *Mutex, held context.Context) string {
	return held.(*heldContext).h.value
}

// stopExpiryTimer stops the expiry timer of m's holding, as if it were late.
func stopExpiryTimer(m *Mutex) {
	h := m.current.Load()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.timer.Stop()
}
