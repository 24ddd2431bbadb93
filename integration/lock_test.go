package integration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed62cefe0a/redlock"
	"go.uber.org/goleak"
)

// dial returns a Client over the first n containers, closed when the test ends.
func dial(t *testing.T, n int, opts ...redlock.Option) *redlock.Client {
	t.Helper()
	c, err := redlock.Dial(suite.urls(n), opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// begin empties the servers and arranges a goroutine leak check for the end
// of the test, after its Clients are closed.
func begin(t *testing.T) {
	t.Helper()
	suite.flush(t)
	ignore := goleak.IgnoreCurrent()
	// go-redis redials in the background once dials failed; the goroutine
	// ends within a second of its client's Close.
	redials := goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")
	t.Cleanup(func() { goleak.VerifyNone(t, ignore, redials) })
}

// overlapCounter records how many holders are inside a critical section.
type overlapCounter struct {
	inside, most, sections atomic.Int64
}

func (o *overlapCounter) enter() {
	n := o.inside.Add(1)
	for {
		most := o.most.Load()
		if n <= most || o.most.CompareAndSwap(most, n) {
			return
		}
	}
}

func (o *overlapCounter) exit() {
	o.inside.Add(-1)
	o.sections.Add(1)
}

func (o *overlapCounter) check(t *testing.T, wantSections int64) {
	t.Helper()
	if most := o.most.Load(); most != 1 {
		t.Errorf("up to %d holders were inside the critical section at once; want 1", most)
	}
	if got := o.sections.Load(); got != wantSections {
		t.Errorf("%d critical sections ran; want %d", got, wantSections)
	}
}

func TestMutualExclusionAcrossClients(t *testing.T) {
	for _, nodes := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d nodes", nodes), func(t *testing.T) {
			begin(t)
			const clients, goroutines, rounds = 4, 2, 15
			var counter overlapCounter
			var wg sync.WaitGroup
			for range clients {
				// Each Client stands for a process: its own connections
				// and its own Mutex.
				m := dial(t, nodes).NewMutex("exclusion")
				for range goroutines {
					wg.Go(func() {
						for range rounds {
							held, err := m.LockContext(t.Context())
							if err != nil {
								t.Errorf("LockContext: %v", err)
								return
							}
							counter.enter()
							time.Sleep(time.Millisecond)
							if held.Err() != nil {
								t.Errorf("held ended inside the critical section: %v", context.Cause(held))
							}
							counter.exit()
							if err := m.UnlockContext(t.Context()); err != nil {
								t.Errorf("UnlockContext: %v", err)
							}
						}
					})
				}
			}
			wg.Wait()
			counter.check(t, clients*goroutines*rounds)
		})
	}
}

func TestGoroutinesSharingAMutex(t *testing.T) {
	begin(t)
	m := dial(t, 3).NewMutex("shared")
	var counter overlapCounter
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				m.Lock()
				counter.enter()
				time.Sleep(time.Millisecond)
				counter.exit()
				m.Unlock()
			}
		})
	}
	wg.Wait()
	counter.check(t, 80)
}

func TestTryLockWhileHeld(t *testing.T) {
	begin(t)
	holder := dial(t, 3).NewMutex("try")
	other := dial(t, 3).NewMutex("try")
	holder.Lock()
	if other.TryLock() {
		t.Fatal("TryLock of a held lock = true")
	}
	if _, err := other.TryLockContext(t.Context()); !errors.Is(err, redlock.ErrNotAcquired) {
		t.Errorf("TryLockContext of a held lock = %v; want ErrNotAcquired", err)
	}
	holder.Unlock()
	if !other.TryLock() {
		t.Fatal("TryLock after Unlock = false")
	}
	other.Unlock()
}

func TestContextDeadlineWhileHeld(t *testing.T) {
	begin(t)
	holder := dial(t, 3).NewMutex("deadline")
	holder.Lock()
	defer holder.Unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	held, err := dial(t, 3).NewMutex("deadline").LockContext(ctx)
	if held != nil || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, redlock.ErrNotAcquired) {
		t.Fatalf("LockContext = %v, %v; want an error wrapping DeadlineExceeded and ErrNotAcquired", held, err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("LockContext returned %v after a 200ms deadline; want it to return at the deadline", elapsed)
	}
}

func TestKeysGoneAfterUnlock(t *testing.T) {
	begin(t)
	m := dial(t, 5).NewMutex("tidy")
	m.Lock()
	inspect := suite.clients(t, 5)
	granted := 0
	for _, rc := range inspect {
		if rc.Exists(t.Context(), "redlock:{tidy}").Val() == 1 {
			granted++
		}
	}
	if granted < 3 {
		t.Errorf("%d of 5 servers have the key while held; want at least 3", granted)
	}
	if err := m.UnlockContext(t.Context()); err != nil {
		t.Fatalf("UnlockContext: %v", err)
	}
	// Unlock returns at quorum; give the other deletes a moment.
	deadline := time.Now().Add(5 * time.Second)
	for i, rc := range inspect {
		for rc.Exists(t.Context(), "redlock:{tidy}").Val() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("server %d still has the key 5s after Unlock", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func TestMinorityPaused(t *testing.T) {
	begin(t)
	c := dial(t, 5, redlock.WithTTL(2*time.Second))
	suite.pause(t, 3, 4)
	var latencies []time.Duration
	m := c.NewMutex("minority")
	for range 20 {
		start := time.Now()
		held, err := m.LockContext(t.Context())
		if err != nil {
			t.Fatalf("LockContext with 2 of 5 servers paused: %v", err)
		}
		if err := m.UnlockContext(t.Context()); err != nil {
			t.Fatalf("UnlockContext with 2 of 5 servers paused: %v", err)
		}
		latencies = append(latencies, time.Since(start))
		if held.Err() == nil {
			t.Fatal("held not ended by Unlock")
		}
	}
	slices.Sort(latencies)
	// The node timeout is 200ms; cycles far below it returned at quorum.
	t.Logf("Lock+Unlock with 2 of 5 paused: p50 %v, max %v", latencies[len(latencies)/2], latencies[len(latencies)-1])
	suite.resume(t, 3, 4)
}

// TestMajorityPausedWhileHeld freezes a majority of servers while the lock is
// held: held must end with ErrLockLost before the keys could expire on the
// servers that still run, so that work scoped to it stops in time.
func TestMajorityPausedWhileHeld(t *testing.T) {
	for _, nodes := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d nodes", nodes), func(t *testing.T) {
			begin(t)
			ttl := time.Second
			m := dial(t, nodes, redlock.WithTTL(ttl)).NewMutex("majority")
			start := time.Now()
			held, err := m.LockContext(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			until := m.Until()
			majority := make([]int, nodes/2+1)
			for i := range majority {
				majority[i] = i
			}
			suite.pause(t, majority...)
			pausedAt := time.Now()
			select {
			case <-held.Done():
			case <-time.After(5 * ttl):
				t.Fatalf("held not ended %v after a majority was paused", 5*ttl)
			}
			lostAt := time.Now()
			if cause := context.Cause(held); !errors.Is(cause, redlock.ErrLockLost) {
				t.Errorf("Cause(held) = %v; want ErrLockLost", cause)
			}
			earliestExpiry := start.Add(ttl)
			t.Logf("%d nodes: paused %v after acquisition; held ended %v after the pause, %v before the validity deadline, %v before the earliest key expiry",
				nodes, pausedAt.Sub(start), lostAt.Sub(pausedAt), until.Sub(lostAt), earliestExpiry.Sub(lostAt))
			if !lostAt.Before(until) {
				t.Errorf("held ended %v after the validity deadline; want by it", lostAt.Sub(until))
			}
			// The watchdog cancels half the drift (here 6ms) early; more
			// would waste validity.
			if lostAt.Before(until.Add(-50 * time.Millisecond)) {
				t.Errorf("held ended %v before the validity deadline, while the lock was still valid", until.Sub(lostAt))
			}
			suite.resume(t, majority...)
			if err := m.UnlockContext(t.Context()); !errors.Is(err, redlock.ErrLockLost) {
				t.Errorf("UnlockContext after loss = %v; want ErrLockLost", err)
			}
		})
	}
}

func TestWatchdogHoldsAShortTTL(t *testing.T) {
	begin(t)
	ttl := 300 * time.Millisecond
	m := dial(t, 3, redlock.WithTTL(ttl)).NewMutex("watchdog")
	held, err := m.LockContext(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	first := m.Until()
	// Meanwhile, another Client keeps trying: it must never get in.
	other := dial(t, 3, redlock.WithTTL(ttl)).NewMutex("watchdog")
	stolen := false
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if other.TryLock() {
			stolen = true
			other.Unlock()
		}
	}
	if stolen {
		t.Error("another Client acquired the lock while the watchdog held it")
	}
	if held.Err() != nil {
		t.Fatalf("held ended after 3s of a 300ms TTL: %v", context.Cause(held))
	}
	if until := m.Until(); !until.After(first.Add(2 * time.Second)) {
		t.Errorf("Until() = %v; want it extended past %v", until, first.Add(2*time.Second))
	}
	for i, rc := range suite.clients(t, 3) {
		if pttl := rc.PTTL(t.Context(), "redlock:{watchdog}").Val(); pttl <= 0 || pttl > ttl {
			t.Errorf("server %d PTTL = %v; want within (0, %v]", i, pttl, ttl)
		}
	}
	m.Unlock()
}

// BenchmarkLockUnlock measures uncontended Lock+Unlock cycles on real Redis
// and reports the acquisition latency percentiles.
func BenchmarkLockUnlock(b *testing.B) {
	for _, nodes := range []int{1, 3, 5} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			c, err := redlock.Dial(suite.urls(nodes))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			m := c.NewMutex("bench")
			ctx := context.Background()
			lockTimes := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				if _, err := m.LockContext(ctx); err != nil {
					b.Fatal(err)
				}
				lockTimes = append(lockTimes, time.Since(start))
				if err := m.UnlockContext(ctx); err != nil {
					b.Fatal(err)
				}
			}
			slices.Sort(lockTimes)
			b.ReportMetric(float64(lockTimes[len(lockTimes)/2].Microseconds()), "lock-p50-µs")
			b.ReportMetric(float64(lockTimes[len(lockTimes)*99/100].Microseconds()), "lock-p99-µs")
		})
	}
}

func TestRestartGuard(t *testing.T) {
	begin(t)
	var logged strings.Builder
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logged.Write(p)
	}), nil))
	guard := 3 * time.Second // room for both restarts to finish within it
	m := dial(t, 3, redlock.WithRestartGuard(guard), redlock.WithLogger(logger)).NewMutex("guarded")
	// The servers may have started less than the guard ago themselves.
	first, cancelFirst := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancelFirst()
	if _, err := m.LockContext(first); err != nil {
		t.Fatalf("LockContext before any restart: %v", err)
	}
	m.Unlock()
	// A quorum needs server 2 and one of the restarted servers, so the lock
	// is free again once the first of them has been up for the guard.
	var restarted time.Time // before the first restarted server started
	for _, i := range []int{0, 1} {
		if err := suite.kill(i); err != nil {
			t.Fatal(err)
		}
		if restarted.IsZero() {
			restarted = time.Now()
		}
		if err := suite.restart(i); err != nil {
			t.Fatal(err)
		}
	}
	_, err := m.TryLockContext(t.Context())
	if !errors.Is(err, redlock.ErrNotAcquired) || !strings.Contains(err.Error(), "recently restarted") {
		t.Fatalf("TryLockContext with 2 of 3 servers just restarted = %v; want ErrNotAcquired naming the restart", err)
	}
	logMu.Lock()
	if !strings.Contains(logged.String(), "node restarted") {
		t.Errorf("no restart was logged; log:\n%s", logged.String())
	}
	logMu.Unlock()
	// Once the guard has passed (uptime is in whole seconds), they count.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := m.LockContext(ctx); err != nil {
		t.Fatalf("LockContext after the guard: %v", err)
	}
	// Uptime is counted in whole seconds of the clock, so a server that
	// reports the guard may have been up for a second less; restarted was
	// taken before it started.
	if waited := time.Since(restarted); waited < guard-time.Second {
		t.Errorf("acquired %v after the first restart; want no sooner than the %v guard allows", waited, guard)
	}
	m.Unlock()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
