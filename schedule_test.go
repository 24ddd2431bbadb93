package redlock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// TestLifecycleSchedules runs random fault schedules, each drawn from a
// seed, against several Mutexes of one lock, and checks the lifecycle's
// invariants after each:
//
//	(a) no two live held contexts overlap, except where the schedule deleted
//	    keys behind a holder's back, which is unsafe by design (counted apart);
//	(b) after Close, no node holds the key of any holding;
//	(c) no extension or repair was sent for a holding after it ended (lost,
//	    or its Unlock began);
//	(d) every held context ended before the validity did;
//	(e) no goroutine is left (checked after each batch of schedules run at
//	    once);
//	(f) Do returned an error wrapping ErrLockLost whenever the lock was lost
//	    by the time its func returned, and nil only if it was not lost;
//	(g) the Observer heard one Acquired per acquisition, and each ended
//	    once: with Lost, or with a Released that was not lost;
//	(h) never more than P permit contexts of a Semaphore of P permits were
//	    live at once, except where the schedule deleted keys behind a
//	    holder's back (counted apart, as for (a));
//	(i) at most one Term's context of an Election was live at a time (with
//	    the same exception), and term numbers increased in the order the
//	    terms began;
//	(j) every observer of the Election received a subsequence of the states
//	    it went through: terms never went back, a term's values came in the
//	    order they were proclaimed, nobody led only while no term was live
//	    throughout the read, and the last state was the final one (nobody
//	    leads, or a term that a Close could not release).
//
// Some schedules set WithMaxHold, and some of the sections use Do. Most
// schedules also run Semaphores of one name and P permits, two to six
// contending for them beside the Mutexes, under the same faults: every
// check holds for their permits too, (a) aside, which (h) replaces. Most
// also run candidates of one Election, one or two on each Client, and one
// or two observers on a Client of their own, which no fault closes: every
// check holds for their terms too, with (i) and (j).
//
// REDLOCK_SCHEDULES sets how many schedules run (default: about 20 seconds'
// worth under -race); REDLOCK_SEED runs the one schedule of that seed and
// prints its trace; REDLOCK_SCHEDULE_PORTS (BASE-END) sets the servers'
// ports, for processes that run schedules side by side (keep it below
// 32768, where the kernel picks clients' ports);
// REDLOCK_SCHEDULE_SEMAPHORES=all runs Semaphores in every schedule (a seed
// that drew them runs the same schedule either way; replay the others with
// it set), and REDLOCK_SCHEDULE_ELECTIONS=all runs Elections in every one.
// A failure prints its seed and its trace.
func TestLifecycleSchedules(t *testing.T) {
	if testing.Short() {
		t.Skip("randomized schedules take about 20s")
	}
	if raw := os.Getenv("REDLOCK_SEED"); raw != "" {
		seed, err := strconv.ParseUint(raw, 10, 64)
		if err != nil {
			t.Fatalf("REDLOCK_SEED=%q: %v", raw, err)
		}
		s := runSchedule(seed, watchStalls(t))
		t.Logf("seed %d trace:\n%s", seed, s.trace())
		if len(s.violations) > 0 {
			t.Fatalf("seed %d: %s", seed, strings.Join(s.violations, "\n"))
		}
		return
	}
	count := 30
	if raw := os.Getenv("REDLOCK_SCHEDULES"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil {
			t.Fatalf("REDLOCK_SCHEDULES=%q: %v", raw, err)
		}
		count = n
	}
	stalls := watchStalls(t)
	base := rand.Uint64() >> 16
	t.Logf("seeds %d to %d; replay one with REDLOCK_SEED", base, base+uint64(count)-1)
	// Schedules mostly wait; a few run at once, but not so many that the
	// process starves its own timers.
	atOnce := 4
	if raceEnabled {
		atOnce = 2
	}
	var tally scheduleTally
	start := time.Now()
	// Long runs report progress about every tenth of the way (seen as it
	// happens with -v).
	every := max(count/10, 500)
	for first := 0; first < count; first += atOnce {
		var seeds []uint64
		for i := first; i < min(first+atOnce, count); i++ {
			seeds = append(seeds, base+uint64(i))
		}
		tally.batch(t, seeds, stalls)
		if done := first + len(seeds); done%every < len(seeds) && done < count {
			t.Logf("%d of %d schedules run in %v; %d failed", done, count, time.Since(start).Round(time.Second), len(tally.failed))
		}
	}
	if len(tally.failed) > 0 {
		t.Errorf("%d of %d schedules failed: seeds %v", len(tally.failed), count, tally.failed)
	}
	t.Logf("%d schedules with elections: %d terms, %d states observed, %d of them of terms that no Campaign returned", tally.withElections, tally.terms, tally.states, tally.phantoms)
	t.Logf("%d schedules in %v, %d with semaphores; %d deleted keys behind a holder's back, with %d overlaps between them and %d moments with more than P permits; %d keys left by a Close that could not reach their node; %d held contexts late while the test process itself stalled",
		count, time.Since(start).Round(time.Millisecond), tally.withSemaphores, tally.unsafe, tally.overlapsUnsafe, tally.permitsUnsafe, tally.leftByClose, tally.paused)
}

// everySchedule reports whether the environment variable name says "all":
// a kind of lock that most schedules draw then runs in every one.
func everySchedule(name string) bool {
	switch raw := os.Getenv(name); raw {
	case "", "drawn":
		return false
	case "all":
		return true
	default:
		panic(fmt.Sprintf("%s=%q: want all or drawn", name, raw))
	}
}

// scheduleTally adds up what the schedules saw.
type scheduleTally struct {
	unsafe, overlapsUnsafe, permitsUnsafe, leftByClose, paused int
	withSemaphores                                             int
	// withElections counts the schedules with Elections; terms, the
	// terms their Campaigns returned; states, what their observers
	// received; phantoms, the states of terms no Campaign returned.
	withElections, terms, states, phantoms int
	failed                                 []uint64
}

// batch runs the schedules of seeds at once, reports their violations,
// and then checks that they left no goroutine.
func (tally *scheduleTally) batch(t *testing.T, seeds []uint64, stalls *stalls) {
	before := []goleak.Option{goleak.IgnoreCurrent(),
		// go-redis redials in the background once dials failed; the
		// goroutine ends within a second of its client's Close.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial")}
	var wg sync.WaitGroup
	results := make([]*schedule, len(seeds))
	for i, seed := range seeds {
		wg.Go(func() { results[i] = runSchedule(seed, stalls) })
	}
	wg.Wait()
	for _, s := range results {
		tally.leftByClose += s.leftByClose
		tally.paused += s.paused
		if s.permits > 0 {
			tally.withSemaphores++
		}
		if r := s.election; r != nil {
			tally.withElections++
			for _, o := range s.holdings {
				if o.term != 0 {
					tally.terms++
				}
			}
			for _, states := range r.observers {
				tally.states += len(states)
			}
			tally.phantoms += r.phantoms
		}
		if s.unsafe {
			tally.unsafe++
			tally.overlapsUnsafe += s.overlaps
			tally.permitsUnsafe += s.tooManyPermits
		}
		if len(s.violations) == 0 {
			continue
		}
		tally.failed = append(tally.failed, s.seed)
		if len(tally.failed) <= 3 {
			t.Errorf("seed %d (replay with REDLOCK_SEED=%d):\n%s\ntrace:\n%s", s.seed, s.seed, strings.Join(s.violations, "\n"), s.trace())
		} else {
			t.Errorf("seed %d: %s", s.seed, s.violations[0])
		}
	}
	if err := goleak.Find(before...); err != nil {
		t.Errorf("goroutines left after the schedules of seeds %v: %v", seeds, err)
		tally.failed = append(tally.failed, seeds[0])
	}
}

// schedule is one run: its setup, drawn from its seed, and what it saw.
type schedule struct {
	seed   uint64
	stalls *stalls
	rng    *rand.Rand
	t0     time.Time

	nodes    int
	ttl      time.Duration
	timeout  time.Duration
	duration time.Duration
	opts     []Option
	permits  int          // of the schedule's Semaphores; 0: none
	sem      *Semaphore   // one of them, for its keys
	election *electionRun // nil: none

	mrs     []*miniredis.Miniredis
	rcs     []*redis.Client
	hooks   []*faultHook
	clients []*Client
	closers sync.WaitGroup // Clients closed during the schedule
	stopped []int          // by node: stops in force; only play uses it
	windows [][]*span      // by node: when faults were in force
	closes  []closeSpan    // Clients closed during the schedule

	mu       sync.Mutex
	events   []string
	holdings []*observed
	observed eventCounts
	maxHold  time.Duration // 0: none
	unsafe   bool          // keys were deleted behind a holder's back
	overlaps int           // in an unsafe schedule
	// tooManyPermits counts, in an unsafe schedule, the acquisitions of a
	// permit at which more than permits were live.
	tooManyPermits int
	leftByClose    int // keys left by a Client closed while their node had a fault
	paused         int // held contexts late while the process stalled
	violations     []string
	repairs        []call // repairs that ran on a server, at: when they ran
}

// ran records the repairs the servers run.
func (s *schedule) ran(c call, at time.Time) {
	if c.kind != "repair" {
		return
	}
	c.at = at
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repairs = append(s.repairs, c)
}

// span is a stretch of the schedule; a zero end means it lasted to the end.
type span struct{ start, end time.Time }

func (a span) overlaps(b span) bool {
	return (a.end.IsZero() || b.start.Before(a.end)) && (b.end.IsZero() || a.start.Before(b.end))
}

// closeSpan is a Close during the schedule.
type closeSpan struct {
	c *Client
	span
}

// observed is one acquisition as the test saw it.
type observed struct {
	who      string
	permit   bool   // a Semaphore's, not a Mutex's
	term     uint64 // a Term's number; 0: not an Election's
	h        *lease
	acquired time.Time
	done     time.Time     // when held's AfterFunc ran
	ran      chan struct{} // closed once it has
	unlocked time.Time     // when UnlockContext returned, if it was called
}

func (s *schedule) logf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, fmt.Sprintf("%8.1fms ", float64(time.Since(s.t0).Microseconds())/1000)+fmt.Sprintf(format, args...))
}

func (s *schedule) violate(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, fmt.Sprintf(format, args...))
}

func (s *schedule) trace() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.events, "\n")
}

// scheduleLock is the name every Mutex of a schedule locks, and
// scheduleSemaphore the name of its Semaphores.
const (
	scheduleLock      = "sched"
	scheduleSemaphore = "schedsem"
)

// runSchedule draws a schedule from seed, runs it, and checks it.
func runSchedule(seed uint64, stalls *stalls) *schedule {
	s := &schedule{seed: seed, stalls: stalls, rng: rand.New(rand.NewPCG(seed, 0x5eed))}
	s.draw()
	s.start()
	stopCtx, stop := context.WithCancel(context.Background())
	var workers sync.WaitGroup
	for ci, c := range s.clients {
		for mi := range 1 + s.rng.IntN(2) {
			m := c.NewMutex(scheduleLock)
			wrng := rand.New(rand.NewPCG(seed, uint64(100+10*ci+mi)))
			workers.Go(func() { s.work(fmt.Sprintf("c%d.m%d", ci, mi), mutexLocker(m), wrng, stopCtx) })
		}
	}
	// The Semaphores draw from a stream of their own, so that a seed's
	// Mutexes and faults are those it drew before Semaphores ran beside
	// them.
	semRng := rand.New(rand.NewPCG(seed, 0x5e3a))
	if semRng.IntN(4) != 0 || everySchedule("REDLOCK_SCHEDULE_SEMAPHORES") {
		// Fewer permits than contenders, so that they contend.
		perClient, contenders := make([]int, len(s.clients)), 0
		for ci := range perClient {
			perClient[ci] = 1 + semRng.IntN(2)
			contenders += perClient[ci]
		}
		s.permits = 1 + semRng.IntN(min(3, contenders-1))
		s.logf("%d semaphores of %d permits", contenders, s.permits)
		for ci, c := range s.clients {
			for si := range perClient[ci] {
				sem := c.NewSemaphore(scheduleSemaphore, s.permits)
				s.sem = sem
				wrng := rand.New(rand.NewPCG(seed, uint64(500+10*ci+si)))
				workers.Go(func() { s.work(fmt.Sprintf("c%d.s%d", ci, si), semaphoreLocker(sem), wrng, stopCtx) })
			}
		}
	}
	s.startElections(seed, stopCtx, &workers)
	faults := s.drawFaults()
	var timeline sync.WaitGroup
	timeline.Go(func() { s.play(faults, stopCtx.Done()) })
	time.Sleep(s.duration)
	stop()
	workers.Wait()
	timeline.Wait()
	s.finish()
	return s
}

// draw picks the schedule's setup.
func (s *schedule) draw() {
	s.nodes = 3 + s.rng.IntN(3)
	s.ttl = []time.Duration{200 * time.Millisecond, 300 * time.Millisecond, 500 * time.Millisecond, time.Second}[s.rng.IntN(4)]
	s.timeout = 30*time.Millisecond + time.Duration(s.rng.Int64N(int64(s.ttl/5-30*time.Millisecond)))
	s.duration = s.ttl/2 + time.Duration(s.rng.Int64N(int64(2*s.ttl)))
	// A wide drift allowance: the schedules test the lifecycle, not how
	// late a loaded machine's timers fire.
	s.opts = []Option{WithObserver(s.observed.observer()), WithTTL(s.ttl), WithNodeTimeout(s.timeout), WithDriftFactor(0.1),
		WithRetryDelay(time.Duration(1+s.rng.IntN(20)) * time.Millisecond), WithRetryJitter(5 * time.Millisecond),
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}
	if s.rng.IntN(2) == 0 {
		s.opts = append(s.opts, WithFencing())
	}
	if s.rng.IntN(3) == 0 {
		s.opts = append(s.opts, func(c *config) { c.noRepair = true })
	}
	if s.rng.IntN(3) == 0 {
		limit := s.ttl/4 + time.Duration(s.rng.Int64N(int64(2*s.ttl)))
		s.opts = append(s.opts, WithMaxHold(limit))
		s.maxHold = limit
	}
	s.t0 = time.Now()
	s.logf("seed %d: %d nodes, TTL %v, node timeout %v, maximum hold %v, for %v", s.seed, s.nodes, s.ttl, s.timeout, s.maxHold, s.duration)
}

// start starts the servers, their fault layers and the Clients, and keeps
// the servers' clocks moving with real time.
func (s *schedule) start() {
	for i := range s.nodes {
		mr := miniredis.NewMiniRedis()
		if err := s.listen(mr); err != nil {
			panic(err)
		}
		// A large pool keeps go-redis from failing dials from its cache of
		// the last dial error, for a second, once a node that was stopped
		// is back: that would only slow the schedule down.
		rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1, PoolSize: 1000})
		hook := newFaultHook(i, s.seed)
		hook.setOnRun(s.ran)
		rc.AddHook(hook)
		s.mrs, s.rcs, s.hooks = append(s.mrs, mr), append(s.rcs, rc), append(s.hooks, hook)
	}
	s.stopped = make([]int, s.nodes)
	s.windows = make([][]*span, s.nodes)
	universal := make([]redis.UniversalClient, len(s.rcs))
	for i, rc := range s.rcs {
		universal[i] = rc
	}
	for range 2 + s.rng.IntN(2) {
		c, err := New(universal, s.opts...)
		if err != nil {
			panic(err)
		}
		s.clients = append(s.clients, c)
	}
}

// scheduleLocker is what a worker of a schedule locks: a Mutex, or a
// Semaphore's permits.
type scheduleLocker struct {
	permit bool
	// acquire takes the lock, with one attempt if try; release gives it
	// back.
	acquire func(ctx context.Context, try bool) (held context.Context, release func() error, err error)
	do      func(ctx context.Context, fn func(held context.Context) error) error
}

func mutexLocker(m *Mutex) scheduleLocker {
	return scheduleLocker{
		acquire: func(ctx context.Context, try bool) (context.Context, func() error, error) {
			var held context.Context
			var err error
			if try {
				held, err = m.TryLockContext(ctx)
			} else {
				held, err = m.LockContext(ctx)
			}
			return held, func() error { return m.UnlockContext(context.Background()) }, err
		},
		do: m.Do,
	}
}

func semaphoreLocker(sem *Semaphore) scheduleLocker {
	return scheduleLocker{
		permit: true,
		acquire: func(ctx context.Context, try bool) (context.Context, func() error, error) {
			var p *Permit
			var err error
			if try {
				p, err = sem.TryAcquire(ctx)
			} else {
				p, err = sem.Acquire(ctx)
			}
			if err != nil {
				return nil, nil, err
			}
			return p.Context(), func() error { return p.Release(context.Background()) }, nil
		},
		do: sem.Do,
	}
}

// work is one worker's loop: lock, hold a while, and usually unlock, until
// stop ends.
func (s *schedule) work(who string, m scheduleLocker, rng *rand.Rand, stop context.Context) {
	for stop.Err() == nil {
		if rng.IntN(4) == 0 {
			if closed := s.do(who, m, rng, stop); closed {
				return
			}
			continue
		}
		ctx, cancel := context.WithTimeout(stop, time.Duration(rng.Int64N(int64(2*s.ttl))))
		held, release, err := m.acquire(ctx, rng.IntN(4) == 0)
		if err != nil {
			cancel()
			if errors.Is(err, ErrClosed) {
				return
			}
			continue
		}
		o := s.acquired(who, held, m.permit)
		hold := time.Duration(rng.Int64N(int64(2 * s.ttl)))
		select {
		case <-time.After(hold):
		case <-held.Done():
			s.logf("%s: held ended: %v", who, context.Cause(held))
		case <-stop.Done():
		}
		cancel()
		if rng.IntN(8) == 0 {
			s.logf("%s: leaves %s to Close", who, short(o.h.value))
			return
		}
		err = release()
		s.mu.Lock()
		o.unlocked = time.Now()
		s.mu.Unlock()
		s.logf("%s: unlocked %s: %v", who, short(o.h.value), err)
	}
}

// do runs one section with Do, and checks (f). It reports whether the
// Client was closed.
func (s *schedule) do(who string, m scheduleLocker, rng *rand.Rand, stop context.Context) (closed bool) {
	ctx, cancel := context.WithTimeout(stop, time.Duration(rng.Int64N(int64(2*s.ttl))))
	defer cancel()
	hold := time.Duration(rng.Int64N(int64(2 * s.ttl)))
	var o *observed
	var lostAtReturn bool
	err := m.do(ctx, func(held context.Context) error {
		o = s.acquired(who, held, m.permit)
		select {
		case <-time.After(hold):
		case <-held.Done():
		case <-stop.Done():
		}
		lostAtReturn = held.Err() != nil && errors.Is(context.Cause(held), ErrLockLost)
		return nil
	})
	if o == nil {
		return errors.Is(err, ErrClosed)
	}
	s.mu.Lock()
	o.unlocked = time.Now()
	s.mu.Unlock()
	o.h.mu.Lock()
	cause := o.h.cause
	o.h.mu.Unlock()
	s.logf("%s: Do with %s: %v", who, short(o.h.value), err)
	switch {
	case lostAtReturn && !errors.Is(err, ErrLockLost):
		s.violate("(f) Do with %s returned %v though held had ended with %v before its func returned", short(o.h.value), err, cause)
	case err == nil && cause != nil:
		s.violate("(f) Do with %s returned nil though the holding was lost: %v", short(o.h.value), cause)
	}
	return false
}

// acquired records a successful acquisition, of a permit if permit.
func (s *schedule) acquired(who string, held context.Context, permit bool) *observed {
	h := held.(*heldContext).l
	o := &observed{who: who, permit: permit, h: h, acquired: time.Now(), ran: make(chan struct{})}
	until, token := h.validity()
	s.logf("%s: acquired %s, valid for %v, token %d", who, short(h.value), time.Until(until).Round(time.Millisecond), token)
	context.AfterFunc(held, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		o.done = time.Now()
		close(o.ran)
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holdings = append(s.holdings, o)
	return o
}

func short(value string) string { return strings.TrimPrefix(value, valuePrefix)[:6] }

// action is one fault of the schedule, at a moment of it, or the end of
// one: undoes names the action it ends.
type action struct {
	at     time.Duration
	what   string
	do     func()
	undoes *action
	done   bool
}

// drawFaults draws the schedule's faults.
func (s *schedule) drawFaults() []*action {
	var actions []*action
	for range s.rng.IntN(13) {
		actions = append(actions, s.drawFault()...)
	}
	slices.SortStableFunc(actions, func(a, b *action) int { return int(a.at - b.at) })
	return actions
}

// faultDraw is one fault as drawn: what, when, for how long, and its
// parameters, drawn once however many nodes it hits.
type faultDraw struct {
	what        int
	kinds       []string // the commands a window fault hits; nil: all
	at, length  time.Duration
	delay       time.Duration
	times       int
	clientIndex int
}

// drawFault draws one fault, on one node, or, half the time for those that
// can, on a quorum of nodes at once, as a network blip would.
func (s *schedule) drawFault() []*action {
	d := faultDraw{
		what: s.rng.IntN(9),
		// An Election's record is written by elect with the fencing round,
		// and read by leader.
		kinds:       [][]string{nil, {"acquire"}, {"extend"}, {"release"}, {"enqueue"}, {"repair", "leader"}, {"fence", "elect"}, {"acquire", "fence", "elect"}}[s.rng.IntN(8)],
		at:          time.Duration(s.rng.Int64N(int64(s.duration))),
		length:      time.Duration(s.rng.Int64N(int64(2 * s.ttl))),
		delay:       time.Duration(s.rng.Int64N(int64(2 * s.timeout))),
		times:       1 + s.rng.IntN(3),
		clientIndex: s.rng.IntN(len(s.clients)),
	}
	targets := []int{s.rng.IntN(s.nodes)}
	if d.what <= 5 && s.rng.IntN(2) == 0 {
		targets = s.rng.Perm(s.nodes)[:quorum(s.nodes)]
	}
	var actions []*action
	for _, i := range targets {
		actions = append(actions, s.faultOn(i, d)...)
	}
	return actions
}

// faultOn returns the actions of fault d on node i.
func (s *schedule) faultOn(i int, d faultDraw) []*action {
	h, mr := s.hooks[i], s.mrs[i]
	var match func(call) bool
	if d.kinds != nil {
		match = isKind(d.kinds...)
	}
	desc := fmt.Sprintf("node %d %v", i, d.kinds)
	pair := func(begin, end string, do, undo func()) []*action {
		var w *span
		first := &action{at: d.at, what: begin, do: func() {
			w = s.window(i)
			do()
		}}
		return []*action{first, {at: d.at + d.length, what: end, undoes: first, do: func() {
			undo()
			s.mu.Lock()
			w.end = time.Now()
			s.mu.Unlock()
		}}}
	}
	window := func(f *fault, what string) []*action {
		return pair(fmt.Sprintf("%s: %s for %v", desc, what, d.length), fmt.Sprintf("%s: %s over", desc, what),
			func() { h.add(f) }, func() { h.remove(f) })
	}
	switch d.what {
	case 0:
		return window(&fault{match: match, after: d.delay}, "replies late")
	case 1:
		return window(&fault{match: match, drop: true, times: d.times}, "replies dropped")
	case 2:
		return window(&fault{match: match, eof: true, times: d.times}, "connection breaks after the command")
	case 3:
		return window(&fault{match: match, fail: errors.New("LOADING simulated")}, "commands fail")
	case 4:
		return window(&fault{match: match, before: d.delay / 2}, "commands slow")
	case 5:
		return pair(fmt.Sprintf("node %d paused for %v", i, d.length), fmt.Sprintf("node %d resumed", i), h.pause, h.resume)
	case 6:
		return pair(fmt.Sprintf("node %d stopped for %v", i, d.length), fmt.Sprintf("node %d restarted", i),
			func() { s.stopNode(i) }, func() { s.restartNode(i) })
	case 7:
		return []*action{{at: d.at, what: fmt.Sprintf("node %d: key deleted", i), do: func() {
			s.mu.Lock()
			s.unsafe = true
			s.mu.Unlock()
			for _, key := range s.keys() {
				mr.Del(key)
			}
		}}}
	default:
		c := s.clients[d.clientIndex]
		return []*action{{at: d.at, what: "a Client closes", do: func() { s.closeDuring(c) }}}
	}
}

// closeDuring closes c in the background, and records when.
func (s *schedule) closeDuring(c *Client) {
	s.closers.Go(func() {
		start := time.Now()
		c.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.closes = append(s.closes, closeSpan{c, span{start, time.Now()}})
	})
}

// window records that a fault on node i begins now.
func (s *schedule) window(i int) *span {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &span{start: time.Now()}
	s.windows[i] = append(s.windows[i], w)
	return w
}

// stopNode stops node i, unless it is stopped already; restartNode starts
// it again once every stop that overlapped has ended.
func (s *schedule) stopNode(i int) {
	s.stopped[i]++
	if s.stopped[i] == 1 {
		s.mrs[i].Close()
	}
}

func (s *schedule) restartNode(i int) {
	s.stopped[i]--
	if s.stopped[i] == 0 {
		if err := s.mrs[i].Restart(); err != nil {
			s.violate("restarting node %d: %v", i, err)
		}
	}
}

func (s *schedule) key() string { return DefaultKeyPrefix + "{" + scheduleLock + "}" }

// keys are the keys of every holder of the schedule: the Mutexes' key and
// the Semaphores' slots.
func (s *schedule) keys() []string {
	keys := []string{s.key()}
	if s.sem != nil {
		keys = append(keys, s.sem.keys.slots...)
	}
	if s.election != nil {
		keys = append(keys, s.election.e.lock.key, s.election.e.lock.key+recordSuffix)
	}
	return keys
}

// listen starts mr on a port below Linux's ephemeral range (32768-60999), so
// that while the node is stopped no client's outgoing connection can take
// its port and keep it from restarting there.
func (s *schedule) listen(mr *miniredis.Miniredis) error {
	var err error
	for range 50 {
		port := schedulePorts.base + rand.IntN(schedulePorts.width)
		if err = mr.StartAddr(fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			return nil
		}
	}
	return err
}

// schedulePorts is the range of ports the schedules' servers listen on, so
// that processes running schedules side by side can be given ranges apart
// (REDLOCK_SCHEDULE_PORTS=BASE-END): a node restarted on its port must not
// find it taken, nor its clients reach another process's server.
var schedulePorts = func() (r struct{ base, width int }) {
	r.base, r.width = 20000, 12000
	if raw := os.Getenv("REDLOCK_SCHEDULE_PORTS"); raw != "" {
		var end int
		if n, _ := fmt.Sscanf(raw, "%d-%d", &r.base, &end); n != 2 || end <= r.base || r.base < 1024 || end > 65535 {
			panic(fmt.Sprintf("REDLOCK_SCHEDULE_PORTS=%q: want BASE-END within 1024-65535", raw))
		}
		r.width = end - r.base
	}
	return r
}()

// maxClockStep bounds one step of the servers' clocks.
const maxClockStep = 3 * time.Millisecond

// play carries out the actions at their moments, and keeps the servers'
// clocks moving with real time until the schedule stops.
func (s *schedule) play(actions []*action, stop <-chan struct{}) {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	last := time.Now()
	for {
		// The servers' clocks move in small steps: a key set between two
		// steps loses the whole of the next step, so a long step, after
		// this goroutine was held up, would expire keys early. Capped, the
		// servers' time falls behind instead, which is safe.
		now := time.Now()
		for _, mr := range s.mrs {
			mr.FastForward(min(now.Sub(last), maxClockStep))
		}
		last = now
		for len(actions) > 0 && time.Since(s.t0) >= actions[0].at {
			s.logf("%s", actions[0].what)
			actions[0].do()
			actions[0].done = true
			actions = actions[1:]
		}
		select {
		case <-stop:
			// Undo what is still in force, so that Close can release.
			for _, a := range actions {
				if a.undoes != nil && a.undoes.done {
					s.logf("%s (at the end)", a.what)
					a.do()
				}
			}
			return
		case <-tick.C:
		}
	}
}

// finish heals every fault, closes the Clients, checks the invariants and
// stops the servers.
func (s *schedule) finish() {
	for _, h := range s.hooks {
		h.clear()
		h.resume()
	}
	// After a node comes back, go-redis fails dials from its cache of the
	// last dial error for up to a second: Close can release only on nodes
	// it can reach.
	for i, rc := range s.rcs {
		deadline := time.Now().Add(3 * time.Second)
		for rc.Ping(context.Background()).Err() != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if err := rc.Ping(context.Background()).Err(); err != nil {
			s.violate("node %d unreachable after the schedule: %v", i, err)
		}
	}
	s.closers.Wait()
	for _, c := range s.clients {
		start := time.Now()
		if err := c.Close(); err != nil {
			s.violate("Close: %v", err)
		}
		s.mu.Lock()
		s.closes = append(s.closes, closeSpan{c, span{start, time.Now()}})
		s.mu.Unlock()
	}
	s.finishElections()
	for _, h := range s.hooks {
		h.wait()
	}
	// Each held context has ended by now, unless (d) is broken, but the
	// goroutine that notes when may not have run yet on a loaded machine.
	wait := time.After(time.Second)
	for _, o := range s.holdings {
		select {
		case <-o.ran:
		case <-wait:
		}
	}
	s.check()
	for i, rc := range s.rcs {
		rc.Close()
		s.mrs[i].Close()
	}
}

// eventCounts counts the Observer's events of a schedule.
type eventCounts struct {
	acquired, lost, released, releasedLost atomic.Int64
	// terms counts the acquisitions of Terms, of which there may be more
	// than Campaign returned: it campaigns again after a term lost as it
	// was won. election hears of each.
	terms    atomic.Int64
	election atomic.Pointer[electionRun]
}

func (e *eventCounts) observer() *Observer {
	return &Observer{
		Acquired: func(ev AcquiredEvent) {
			if ev.Kind != KindElection {
				e.acquired.Add(1)
				return
			}
			e.terms.Add(1)
			if r := e.election.Load(); r != nil {
				r.termAcquired(ev)
			}
		},
		Lost: func(LostEvent) { e.lost.Add(1) },
		Released: func(r ReleasedEvent) {
			if r.Lost {
				e.releasedLost.Add(1)
			} else {
				e.released.Add(1)
			}
		},
	}
}

// checkEvents checks (g), once every Client is closed.
func (s *schedule) checkEvents(holdings []*observed) {
	terms := 0
	for _, o := range holdings {
		if o.term != 0 {
			terms++
		}
	}
	e := &s.observed
	acquired, lost, released, releasedLost, termsAcquired := e.acquired.Load(), e.lost.Load(), e.released.Load(), e.releasedLost.Load(), e.terms.Load()
	if acquired != int64(len(holdings)-terms) || termsAcquired < int64(terms) || lost+released != acquired+termsAcquired || releasedLost > lost {
		s.violate("(g) %d acquisitions seen, %d of them terms; events: %d Acquired, %d of Terms, %d Lost, %d Released not lost, %d Released lost",
			len(holdings), terms, acquired, termsAcquired, lost, released, releasedLost)
	}
}

// check checks invariants (a) to (d).
func (s *schedule) check() {
	s.mu.Lock()
	holdings := slices.Clone(s.holdings)
	s.mu.Unlock()
	s.checkEvents(holdings)
	ends := make(map[string]time.Time)
	for _, o := range holdings {
		ends[o.h.value] = s.checkEnd(o)
	}
	s.checkOverlaps(holdings, ends)
	s.checkPermits(holdings, ends)
	s.checkTerms(holdings)
	s.checkObservers(holdings, ends)
	s.checkKeys()
	s.checkIssued(ends)
	s.checkRepairs(holdings)
	s.checkReleases()
}

// checkReleases checks that a holding's release waited for the extension
// and repair rounds in flight for it: none started after such a round and
// before that round's wait ended.
func (s *schedule) checkReleases() {
	busy := make(map[string]map[tracedRound]bool) // by value: its extension and repair rounds
	releases := make(map[tracedRound]bool)
	for _, h := range s.hooks {
		for _, c := range h.sent(func(c call) bool { return c.round != nil }) {
			switch {
			case c.kind == "extend" || c.kind == "repair":
				for _, v := range c.values {
					if busy[v] == nil {
						busy[v] = make(map[tracedRound]bool)
					}
					busy[v][c.round] = true
				}
			case purposeOf(c.round) == "release":
				releases[c.round] = true
			}
		}
	}
	for rel := range releases {
		l, _ := rel.traceLease()
		v := l.value
		for b := range busy[v] {
			concluded := b.traceConcluded()
			if b.traceStart().Before(rel.traceStart()) && (concluded.IsZero() || rel.traceStart().Before(concluded)) {
				s.violate("(c) %s released %v before a round in flight for it was over", short(v), concluded.Sub(rel.traceStart()))
			}
		}
	}
}

// checkEnd checks (d) for one holding, and returns when it ended.
func (s *schedule) checkEnd(o *observed) time.Time {
	o.h.mu.Lock()
	ended, until, state := o.h.stoppedAt, o.h.until, o.h.state
	o.h.mu.Unlock()
	s.mu.Lock()
	done := o.done
	s.mu.Unlock()
	late := ended.After(until) || done.IsZero() || done.After(until.Add(100*time.Millisecond))
	// The expiry timer was due at until-lead. A stall of the test process
	// in between, at least half as long as the timer was late (or 5ms),
	// explains the lateness.
	due := until.Add(-o.h.spec.lead())
	least := min(stallGap, max(hiccupGap, latest(ended, done).Sub(due)/2))
	switch {
	case state == held || ended.IsZero():
		s.violate("(d) %s %s still held after Close", o.who, short(o.h.value))
	case late && s.stalls.during(due, latest(ended, done), least):
		// The expiry timer could not fire in time: not the library's doing.
		s.mu.Lock()
		s.paused++
		s.mu.Unlock()
	case ended.After(until):
		s.violate("(d) %s %s ended %v after its validity", o.who, short(o.h.value), ended.Sub(until))
	case late:
		s.violate("(d) %s %s: held ended at %v, validity at %v", o.who, short(o.h.value), done.Sub(s.t0), until.Sub(s.t0))
	}
	return ended
}

// checkOverlaps checks (a): no two holdings were held at once, unless the
// schedule deleted keys behind a holder's back.
func (s *schedule) checkOverlaps(holdings []*observed, ends map[string]time.Time) {
	s.mu.Lock()
	unsafe := s.unsafe
	s.mu.Unlock()
	for i, a := range holdings {
		for _, b := range holdings[i+1:] {
			if a.permit || b.permit || (a.term == 0) != (b.term == 0) || !a.acquired.Before(ends[b.h.value]) || !b.acquired.Before(ends[a.h.value]) {
				continue // not of one lock, or not at once
			}
			if unsafe {
				s.mu.Lock()
				s.overlaps++
				s.mu.Unlock()
				continue
			}
			check := "(a)"
			if a.term != 0 {
				check = "(i)"
			}
			s.violate("%s %s %s and %s %s were held at once; the commands that named them:\n%s\n--\n%s", check, a.who, short(a.h.value), b.who, short(b.h.value),
				s.callsOf(a.h.value), s.callsOf(b.h.value))
		}
	}
}

// checkKeys checks (b): after Close, no node has the lock's key, nor a
// Semaphore's slot.
func (s *schedule) checkKeys() {
	for i, mr := range s.mrs {
		for _, key := range s.keys() {
			value, err := mr.Get(key)
			if strings.HasSuffix(key, recordSuffix) {
				value = parseRecord(value).holder // a leader's record names its holder
			}
			switch {
			case err != nil:
			case s.closedUnreachable(i, value):
				s.mu.Lock()
				s.leftByClose++
				s.mu.Unlock()
			default:
				stalled := s.stalls.during(s.t0, time.Now(), s.timeout/2)
				s.violate("(b) node %d still has the key %s, of %s, after Close (the process stalled for half a node timeout or more during the schedule: %v); the commands that named it:\n%s",
					i, key, short(value), stalled, s.callsOf(value))
			}
		}
	}
}

// checkPermits checks (h): at no acquisition of a permit were more than
// the Semaphores' permits live, counting it, unless the schedule deleted
// keys behind a holder's back. The most live at once is reached at some
// acquisition, so looking at each is enough.
func (s *schedule) checkPermits(holdings []*observed, ends map[string]time.Time) {
	if s.permits == 0 {
		return
	}
	s.mu.Lock()
	unsafe := s.unsafe
	s.mu.Unlock()
	for _, a := range holdings {
		if !a.permit {
			continue
		}
		var live []*observed
		for _, b := range holdings {
			if b.permit && !b.acquired.After(a.acquired) && a.acquired.Before(ends[b.h.value]) {
				live = append(live, b)
			}
		}
		if len(live) <= s.permits {
			continue
		}
		if unsafe {
			s.mu.Lock()
			s.tooManyPermits++
			s.mu.Unlock()
			continue
		}
		var lines []string
		for _, b := range live {
			lines = append(lines, fmt.Sprintf("%s %s, acquired at %v, ended at %v:\n%s", b.who, short(b.h.value), b.acquired.Sub(s.t0), ends[b.h.value].Sub(s.t0), s.callsOf(b.h.value)))
		}
		s.violate("(h) %d permits of %d were live at once, when %s acquired %s:\n%s", len(live), s.permits, a.who, short(a.h.value), strings.Join(lines, "\n--\n"))
	}
}

// checkIssued checks (c): no extension or repair was issued for a holding
// after it ended. A call issued as part of a round counts from the start
// of its round.
func (s *schedule) checkIssued(ends map[string]time.Time) {
	for _, h := range s.hooks {
		for _, c := range h.sent(isKind("extend", "repair")) {
			issued := c.at
			if c.round != nil {
				issued = c.round.traceStart()
			}
			for _, v := range c.values {
				if end, ok := ends[v]; ok && issued.After(end) {
					s.violate("(c) node %d: %s for %s issued %v after the holding ended", c.node, c.kind, short(v), issued.Sub(end))
				}
			}
		}
	}
}

// callsOf lists the commands sent that name value, in order.
func (s *schedule) callsOf(value string) string {
	var calls []call
	for _, h := range s.hooks {
		calls = append(calls, h.sent(func(c call) bool { return slices.Contains(c.values, value) })...)
	}
	slices.SortFunc(calls, func(a, b call) int { return a.at.Compare(b.at) })
	var lines []string
	for _, c := range calls {
		result := c.result
		if len(result) > 300 {
			result = result[:300]
		}
		lines = append(lines, fmt.Sprintf("%8.1fms node %d %s: %s (%s)", float64(c.at.Sub(s.t0).Microseconds())/1000, c.node, c.kind, result, c.ran))
	}
	return strings.Join(lines, "\n")
}

// closedUnreachable reports whether value's Client was closed while node i
// had a fault or did not answer a call in time, or while the test process
// stalled: Close's last release may not have reached the node in time, and
// the key is left to expire with its TTL.
func (s *schedule) closedUnreachable(i int, value string) bool {
	// A call of Close's that got no answer in time: the node did not
	// answer Close, and the key is left to its TTL, as documented. A
	// server's error reply (NOSCRIPT, say) is an answer.
	unanswered := func(cl closeSpan) bool {
		for _, c := range s.hooks[i].sent(nil) {
			if !c.at.Before(cl.start) && !c.at.After(cl.end) && noAnswer(c.result) {
				return true
			}
		}
		return false
	}
	var owner *Client
	for _, h := range s.hooks {
		for _, c := range h.sent(func(c call) bool { return slices.Contains(c.values, value) }) {
			if l := leaseOf(c.round); l != nil {
				owner = l.spec.client
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cl := range s.closes {
		if cl.c != owner {
			continue
		}
		// Close's last try waits a node timeout for each node.
		if s.stalls.during(cl.start, cl.end, s.timeout/2) || unanswered(cl) {
			return true
		}
		for _, w := range s.windows[i] {
			if w.overlaps(cl.span) {
				return true
			}
		}
	}
	return false
}

// stalls records when the test process itself did not run on time: a
// 1ms ticker's ticks more than hiccupGap apart. A held context that ends late
// across such a stall says nothing about the library; Redlock assumes
// bounded pauses.
type stalls struct {
	mu   sync.Mutex
	list []span
}

const (
	hiccupGap = 2 * time.Millisecond // the shortest stall recorded
	stallGap  = 5 * time.Millisecond // a stall that excuses any late end
)

// watchStalls starts watching for stalls until the test ends.
func watchStalls(t *testing.T) *stalls {
	st := &stalls{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				now = time.Now()
				if now.Sub(last) > hiccupGap {
					st.mu.Lock()
					st.list = append(st.list, span{last, now})
					st.mu.Unlock()
				}
				last = now
			}
		}
	})
	t.Cleanup(func() {
		close(done)
		wg.Wait()
	})
	return st
}

// during reports whether a stall of at least least overlapped [from, to].
func (st *stalls) during(from, to time.Time, least time.Duration) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, s := range st.list {
		if s.end.Sub(s.start) >= least && s.overlaps(span{from, to}) {
			return true
		}
	}
	return false
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// checkRepairs checks that Unlock waited for the repairs in flight: none ran
// on a server after Unlock returned, unless its round gave up waiting for it
// (a node that did not answer within the node timeout; the late repair is
// then remembered and released, which (b) checks).
func (s *schedule) checkRepairs(holdings []*observed) {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlocked := make(map[string]time.Time)
	for _, o := range holdings {
		if !o.unlocked.IsZero() {
			unlocked[o.h.value] = o.unlocked
		}
	}
	for _, c := range s.repairs {
		end, ok := unlocked[c.values[0]]
		if !ok || !c.at.After(end) {
			continue
		}
		// The round gave up on the node when its wait timed out, or when
		// the call itself did: at the round's deadline the call's timeout
		// and the round's can come in either order.
		if !c.round.gaveUp(c.node) {
			s.violations = append(s.violations, fmt.Sprintf("(c) node %d: a repair of %s ran %v after Unlock returned", c.node, short(c.values[0]), c.at.Sub(end)))
		}
	}
}

// noAnswer reports whether a call's result, as the fault layer records it,
// says that no reply came: a timeout or a broken or refused connection.
func noAnswer(result string) bool {
	for _, sign := range []string{"deadline exceeded", "i/o timeout", "connection refused", "EOF", "connection reset", "broken pipe"} {
		if strings.Contains(result, sign) {
			return strings.HasPrefix(result, "error:")
		}
	}
	return false
}

// purposeOf is what round r was for, or "" if it is not a lease's round.
func purposeOf(r tracedRound) string {
	if r == nil {
		return ""
	}
	_, purpose := r.traceLease()
	return purpose
}

// leaseOf is the lease round r was for, or nil.
func leaseOf(r tracedRound) *lease {
	if r == nil {
		return nil
	}
	l, _ := r.traceLease()
	return l
}
