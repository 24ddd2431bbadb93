package redlock

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestWatchdogKeepsTheLock(t *testing.T) {
	mrs, clients := servers(t, 3)
	// A 1s TTL leaves a loaded machine (-race, two cores) 600ms of
	// scheduling delay before an extension is late.
	m := newClient(t, clients, WithTTL(time.Second)).NewMutex("kept")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	first := m.Until()
	// miniredis's clock moves only when told; move it with real time.
	for range 50 {
		time.Sleep(50 * time.Millisecond)
		for _, mr := range mrs {
			mr.FastForward(50 * time.Millisecond)
		}
	}
	if held.Err() != nil {
		t.Fatalf("held ended after 2.5s with a 1s TTL: %v", context.Cause(held))
	}
	if later := m.Until(); !later.After(first.Add(time.Second)) {
		t.Errorf("Until() = %v after 2.5s; want it moved forward from %v by more than 1s", later, first)
	}
	m.Unlock()
}

func TestWatchdogBatchesExtensions(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithTTL(2*time.Second))
	const locks = 100
	var mutexes []*Mutex
	var helds []context.Context
	for i := range locks {
		m := c.NewMutex(fmt.Sprintf("batched-%d", i))
		held, err := m.LockContext(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		mutexes = append(mutexes, m)
		helds = append(helds, held)
	}
	// Two extensions each: every lock's validity ends at least two
	// intervals (2×667ms) after the latest acquisition's did.
	target := mutexes[locks-1].Until().Add(2 * c.cfg.extendInterval())
	// Count the commands the Client sends from here on.
	counters := make([]*commandCounter, len(clients))
	for i, rc := range clients {
		counters[i] = &commandCounter{only: map[string]bool{"evalsha": true, "eval": true}}
		rc.AddHook(counters[i])
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < locks; {
		if err := helds[i].Err(); err != nil {
			t.Fatalf("lock %d lost before its second extension: %v", i, context.Cause(helds[i]))
		}
		if !mutexes[i].Until().Before(target) {
			i++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("lock %d: Until() = %v after 10s; want %v or later", i, mutexes[i].Until(), target)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i, counter := range counters {
		// One call per batch; without batching it would be 2 per lock.
		if calls := counter.count.Load(); calls > 2*locks/10 {
			t.Errorf("node %d: %d calls to extend %d locks twice; want at most %d", i, calls, locks, 2*locks/10)
		} else {
			t.Logf("node %d: %d calls to extend %d locks twice", i, calls, locks)
		}
	}
	for i, m := range mutexes {
		if helds[i].Err() != nil {
			t.Fatalf("lock %d lost: %v", i, context.Cause(helds[i]))
		}
		if err := m.UnlockContext(t.Context()); err != nil {
			t.Errorf("Unlock %d: %v", i, err)
		}
	}
	settle(t, c.nodes) // Unlock returns at a quorum; the last release may be in flight
	for _, m := range mutexes {
		if n := keysOn(mrs, m.key); n != 0 {
			t.Errorf("%s on %d nodes after Unlock", m.key, n)
		}
	}
}

func TestWatchdogRepairsANodeThatLostTheKey(t *testing.T) {
	mrs, clients := servers(t, 5)
	m := newClient(t, clients, WithTTL(time.Second)).NewMutex("repair")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, "redlock:{repair}") == 5 })
	value, _ := mrs[0].Get("redlock:{repair}")
	mrs[0].Del("redlock:{repair}")          // as if node 0 restarted
	mrs[1].Set("redlock:{repair}", "other") // a key that is not ours: never overwritten
	mrs[1].SetTTL("redlock:{repair}", time.Hour)
	// Nodes 2-4 still make a quorum, so extensions succeed and repair node 0.
	waitFor(t, "node 0 repaired", func() bool {
		got, _ := mrs[0].Get("redlock:{repair}")
		return got == value
	})
	if got, _ := mrs[1].Get("redlock:{repair}"); got != "other" {
		t.Errorf("node 1 key = %q; want the other holder's value untouched", got)
	}
	if ttl := mrs[0].TTL("redlock:{repair}"); ttl <= 0 || ttl > time.Second {
		t.Errorf("repaired key TTL = %v; want within (0, 1s]", ttl)
	}
	if held.Err() != nil {
		t.Errorf("held ended: %v", context.Cause(held))
	}
	m.Unlock()
	settle(t, m.client.nodes)
	if mrs[0].Exists("redlock:{repair}") {
		t.Error("node 0 still has the key after Unlock")
	}
}

// The first extension is due one interval after the acquisition
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

// Unlock waits for an extension in flight before it releases.
func TestUnlockWaitsForAnExtensionInFlight(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 9)
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(400*time.Millisecond))
	warm(t, c)
	var mu sync.Mutex
	var extendsRan []time.Time
	for _, h := range hooks {
		h.add(&fault{match: isKind("extend"), before: 150 * time.Millisecond})
		h.setOnRun(func(c call, at time.Time) {
			if c.kind == "extend" {
				mu.Lock()
				extendsRan = append(extendsRan, at)
				mu.Unlock()
			}
		})
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
			if !slices.Contains(rel.values, value) {
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

// Unlock waits for a repair in flight, so that the repair cannot
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
	hooks[0].setOnRun(func(c call, at time.Time) {
		if isRepair(c) {
			mu.Lock()
			repairsRan = append(repairsRan, at)
			mu.Unlock()
		}
	})
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

// Close stops the watchdog, but the holdings it loses are released only
// once their repair rounds in flight are over, as Unlock's are.
func TestCloseWaitsForARepairInFlight(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 23)
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(400*time.Millisecond))
	warm(t, c)
	m := c.NewMutex("closing")
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	hooks[0].add(&fault{match: isRepair, after: 150 * time.Millisecond})
	mrs[0].Del(m.key)
	waitFor(t, "a repair to be sent", func() bool { return len(hooks[0].sent(isRepair)) > 0 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	repair := hooks[0].sent(isRepair)[0]
	releases := hooks[0].sent(func(c call) bool { return c.kind == "release" && c.key == m.key })
	if len(releases) == 0 {
		t.Fatal("no release sent to node 0")
	}
	if repair.back.IsZero() || releases[0].at.Before(repair.back) {
		t.Errorf("the release was sent to node 0 %v before the repair in flight got its reply (%s)", repair.back.Sub(releases[0].at), repair.result)
	}
	if mrs[0].Exists(m.key) {
		t.Errorf("node 0 still has %s after Close", m.key)
	}
}

// isRepair matches the commands that put the key back on a node that lost
// it.
func isRepair(c call) bool { return c.kind == "repair" }

// A repaired key lives no longer than the validity the quorum
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
	hooks[0].setOnRun(func(c call, at time.Time) {
		if isRepair(c) {
			mu.Lock()
			runs = append(runs, ran{at: at, px: c.px, until: m.Until()})
			mu.Unlock()
		}
	})
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

// A repair whose connection breaks is not sent again once Unlock has begun:
// each copy is a new send.
func TestRepairIsNotResentAfterUnlockBegan(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 3)
	c := newClient(t, clients, WithTTL(time.Second), WithNodeTimeout(400*time.Millisecond), WithLogger(slog.New(&records{})))
	warm(t, c)
	m := c.NewMutex("resent")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	value := valueOf(m, held)
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	// Node 0 lost the key: the next extension repairs it. The repair's
	// first copy fails with EOF 150ms after it was sent, without running.
	hooks[0].add(&fault{match: isKind("repair"), before: 150 * time.Millisecond, fail: io.EOF, times: 1})
	mrs[0].Del(m.key)
	waitFor(t, "the repair", func() bool { return len(hooks[0].sent(isKind("repair"))) > 0 })
	unlockBegan := time.Now()
	if err := m.UnlockContext(context.Background()); err != nil {
		t.Logf("UnlockContext: %v", err)
	}
	settle(t, c.nodes)
	for _, call := range hooks[0].sent(isKind("repair")) {
		if call.at.After(unlockBegan) && slices.Contains(call.values, value) {
			t.Errorf("node 0: repair SET NX sent %v after Unlock began (result %q)", call.at.Sub(unlockBegan), call.result)
		}
	}
}

// An extension whose connection breaks after Unlock is not sent again, even
// when the watchdog has given the lock's queue entry to another holding
// meanwhile.
func TestExtensionIsNotResentThroughAReusedEntry(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 11)
	c := newClient(t, clients, WithTTL(900*time.Millisecond), WithNodeTimeout(400*time.Millisecond), WithLogger(slog.New(&records{})))
	warm(t, c)
	a := c.NewMutex("reuse-a")
	b := c.NewMutex("reuse-b")
	heldA, err := a.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	valueA := valueOf(a, heldA)
	// Node 2: the first extension's connection breaks 250ms after it was
	// sent, without running. Nodes 0 and 1 answer at once: the round is won.
	hooks[2].add(&fault{match: isKind("extend"), before: 250 * time.Millisecond, fail: io.EOF, times: 1})
	until0 := a.Until()
	waitFor(t, "first extension decided", func() bool { return a.Until().After(until0) })
	if err := a.UnlockContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	unlockReturned := time.Now()
	// Another Mutex of the Client takes A's freed watchdog entry.
	if _, err := b.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Unlock()
	time.Sleep(400 * time.Millisecond)
	settle(t, c.nodes)
	noExtensionAfter(t, hooks[2], valueA, unlockReturned)
}

// A batched extension whose connection breaks is sent again only while
// every lock it names is held.
func TestBatchedExtensionIsNotResentForAnUnlockedLock(t *testing.T) {
	_, clients, hooks := faultyServers(t, 3, 12)
	c := newClient(t, clients, WithTTL(900*time.Millisecond), WithNodeTimeout(400*time.Millisecond), WithLogger(slog.New(&records{})))
	warm(t, c)
	a := c.NewMutex("batch-a")
	b := c.NewMutex("batch-b")
	heldA, err := a.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Unlock()
	valueA := valueOf(a, heldA)
	hooks[2].add(&fault{match: isKind("extend"), before: 250 * time.Millisecond, fail: io.EOF, times: 1})
	until0 := a.Until()
	waitFor(t, "first extension decided", func() bool { return a.Until().After(until0) })
	if n := len(hooks[2].sent(isKind("extend"))[0].values); n != 2 {
		t.Fatalf("first extension carried %d locks; want both", n)
	}
	if err := a.UnlockContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	unlockReturned := time.Now()
	time.Sleep(400 * time.Millisecond)
	settle(t, c.nodes)
	noExtensionAfter(t, hooks[2], valueA, unlockReturned)
}

// The retry warning names a lock of the round, though its queue entry may
// have gone to another lock before the warning is written.
func TestRetryLogNamesALockOfTheRound(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 5, 13)
	logs := &records{}
	c := newClient(t, clients, WithTTL(1500*time.Millisecond), WithNodeTimeout(400*time.Millisecond), WithLogger(slog.New(logs)))
	warm(t, c)
	a, b, cc, d := c.NewMutex("log-a"), c.NewMutex("log-b"), c.NewMutex("log-c"), c.NewMutex("log-d")
	for _, m := range []*Mutex{a, b, cc} {
		if _, err := m.LockContext(t.Context()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // A is first in the batch: admitted[0]
	}
	defer b.Unlock()
	defer cc.Unlock()
	waitFor(t, "all grants", func() bool {
		return keysOn(mrs, a.key) == 5 && keysOn(mrs, b.key) == 5 && keysOn(mrs, cc.key) == 5
	})
	// Node 4 fails the extension for all three; B lost its key on node 3
	// (a repair follows, slowed to 300ms); C lost it on nodes 1 and 2 (too
	// few answers either way: a retry, which logs).
	hooks[4].add(&fault{match: isKind("extend"), fail: io.ErrClosedPipe, times: 1})
	hooks[3].add(&fault{match: isKind("repair"), before: 300 * time.Millisecond, times: 1})
	mrs[3].Del(b.key)
	mrs[1].Del(cc.key)
	mrs[2].Del(cc.key)
	waitFor(t, "the repair of B", func() bool { return len(hooks[3].sent(isKind("repair"))) > 0 })
	if err := a.UnlockContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer d.Unlock()
	time.Sleep(400 * time.Millisecond)
	logs.mu.Lock()
	defer logs.mu.Unlock()
	for _, r := range logs.list {
		r.Attrs(func(at slog.Attr) bool {
			if r.Message == "redlock: extension failed; retrying" && at.Key == "first" && at.Value.String() == "log-d" {
				t.Errorf("%q names %s, a lock that was not in the round (it reused log-a's freed entry)", r.Message, at.Value)
			}
			return true
		})
	}
}

// noExtensionAfter checks that hook's node was sent no extension of value
// after since.
func noExtensionAfter(t *testing.T, hook *faultHook, value string, since time.Time) {
	t.Helper()
	for _, call := range hook.sent(isKind("extend")) {
		if slices.Contains(call.values, value) && call.at.After(since) {
			t.Errorf("node %d: extension of %s (PEXPIRE) sent %v after UnlockContext returned (result %q)", hook.node, short(value), call.at.Sub(since), call.result)
		}
	}
}

// (Found by the schedules, seed 119099848465770.) A repair round waits for
// its calls even when most nodes did not answer an earlier round: a round
// that thinks itself decided by its hung nodes alone returns at once, and
// Unlock, which waits for it, lets the repair land after it returned.
func TestRepairWaitsDespiteHungNodes(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 29)
	c := newClient(t, clients, WithTTL(10*time.Second), WithNodeTimeout(400*time.Millisecond))
	warm(t, c)
	m := c.NewMutex("repair-hung")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	l := held.(*heldContext).l
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	mrs[0].Del(m.key)
	var ran atomic.Int64
	hooks[0].add(&fault{match: isRepair, before: 150 * time.Millisecond})
	hooks[0].setOnRun(func(c call, at time.Time) {
		if isRepair(c) {
			ran.Store(at.UnixNano())
		}
	})
	c.nodes[1].hung.Store(true) // as after a round they did not answer in time
	c.nodes[2].hung.Store(true)
	until, _ := l.validity()
	if !l.beginRound() {
		t.Fatal("the lease is not held")
	}
	c.watchdog.repair(l, until, []bool{true, false, false})
	l.roundDone()
	returned := time.Now()
	if at := ran.Load(); at == 0 || time.Unix(0, at).After(returned) {
		t.Errorf("repair returned before its SET ran on node 0 (ran: %v)", at != 0)
	}
	settle(t, c.nodes)
	if !mrs[0].Exists(m.key) {
		t.Errorf("node 0 was not repaired")
	}
	c.nodes[1].hung.Store(false) // as they answer again
	c.nodes[2].hung.Store(false)
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A node that lost the key and always answers after the quorum has decided
// the extension round is repaired all the same: its refusal counts when it
// comes, at the next round at the latest. Node 0's extension replies come
// 100ms late, after nodes 1 and 2 decide every round.
func TestRepairOfANodeThatAnswersLast(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 31)
	c := newClient(t, clients, WithTTL(900*time.Millisecond), WithNodeTimeout(400*time.Millisecond))
	warm(t, c)
	m := c.NewMutex("repair-last")
	if _, err := m.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all grants", func() bool { return keysOn(mrs, m.key) == 3 })
	hooks[0].add(&fault{match: isKind("extend"), after: 100 * time.Millisecond})
	mrs[0].Del(m.key)
	start := time.Now()
	// Extensions come every TTL/3, 300ms: four rounds.
	for !mrs[0].Exists(m.key) {
		if time.Since(start) > 1200*time.Millisecond {
			t.Fatalf("node 0 not repaired within %v; its refusals came after each round's quorum", time.Since(start))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("node 0 repaired %v after it lost the key", time.Since(start))
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A refusal that comes after its extension round was applied is noted on
// its own lease, not on whichever lease the watchdog's entry serves by then:
// a's late refusal from node 0 must not repair b there. (Failed first, with
// a data race on the entry, and a repair sent for b.)
func TestLateRefusalIsNotedOnItsOwnLease(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 41)
	c := newClient(t, clients, WithTTL(900*time.Millisecond), WithNodeTimeout(400*time.Millisecond))
	warm(t, c)
	a := c.NewMutex("late-a")
	if _, err := a.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a's grants", func() bool { return keysOn(mrs, a.key) == 3 })
	first := a.Until()
	hooks[0].add(&fault{match: isKind("extend"), after: 300 * time.Millisecond, times: 1})
	mrs[0].Del(a.key)
	waitFor(t, "a's first extension", func() bool { return a.Until().After(first) })
	if err := a.UnlockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	b := c.NewMutex("late-b")
	if _, err := b.LockContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b's grants", func() bool { return keysOn(mrs, b.key) == 3 })
	// a's refusal comes back, then b's next two extension rounds run.
	time.Sleep(800 * time.Millisecond)
	for _, call := range hooks[0].sent(isRepair) {
		t.Errorf("repair of %v sent to node 0, which never lost b's key", call.values)
	}
	b.Unlock()
}
