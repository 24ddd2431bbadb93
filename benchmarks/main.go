// Command benchmarks measures redlock side by side with go-redsync/redsync
// and bsm/redislock on the same redis-server processes, which it starts on
// 127.0.0.1 and stops by PID. It prints a table and writes JSON.
//
//	go run . -json results.json
//
// See BENCHMARKS.md for the scenarios and the latest results.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	mathrand "math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

// result is one row: one library in one scenario.
type result struct {
	Scenario       string
	Library        string
	Nodes          int
	Workers        int
	Seconds        float64
	Cycles         int64   // completed Lock+Unlock cycles (critical sections)
	PerSecond      float64 // cycles per second
	LockP50us      float64 `json:",omitempty"`
	LockP99us      float64 `json:",omitempty"`
	UnlockP99us    float64 `json:",omitempty"`
	WaitP99ms      float64 `json:",omitempty"`
	AllocsPerCycle float64 `json:",omitempty"`
	Fairness       float64 `json:",omitempty"` // Jain's index over workers' cycle counts
	Retake         float64 `json:",omitempty"` // share of sections whose holder also held the one before
	CommandsPerCS  float64 `json:",omitempty"`
	ServerCPUus    float64 `json:",omitempty"` // the servers' CPU time (INFO cpu, user+sys) per critical section
	Failures       int64
	Violations     int64  // overlapping critical sections
	Notes          string `json:",omitempty"`
}

// options are the command's flags.
type options struct {
	duration                time.Duration
	jsonPath, only, onlyLib string
	manyLocks               int
	cpuProfile, memProfile  string
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of each measurement")
	flag.StringVar(&o.jsonPath, "json", "", "write the results as JSON to this file")
	flag.StringVar(&o.only, "only", "", "run only scenarios whose name contains this")
	flag.IntVar(&o.manyLocks, "many", 10000, "locks held at once in the many-locks scenario")
	flag.StringVar(&o.onlyLib, "lib", "", "run only the library of this name")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.StringVar(&o.memProfile, "memprofile", "", "write an allocation profile of the whole run to this file")
	flag.Parse()
	if err := o.run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchmarks:", err)
		os.Exit(1)
	}
}

// run starts the servers, runs the scenarios o selects, and reports.
func (o options) run() error {
	if o.onlyLib != "" {
		libraries = slices.DeleteFunc(libraries, func(l library) bool { return l.name != o.onlyLib })
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if o.memProfile != "" {
		runtime.MemProfileRate = 1 // every allocation, for exact counts
		defer writeHeapProfile(o.memProfile)
	}
	redis.SetLogger(quiet{})
	servers, err := startServers(5)
	if err != nil {
		return err
	}
	defer stopServers(servers)
	results := o.scenarios(servers)
	printTable(results)
	if o.jsonPath == "" {
		return nil
	}
	data, _ := json.MarshalIndent(map[string]any{"machine": machine(), "results": results}, "", "  ")
	return os.WriteFile(o.jsonPath, data, 0o644)
}

// scenarios runs each scenario o selects, for each library.
func (o options) scenarios(servers []*server) []result {
	addrs := func(n int) []string {
		var list []string
		for _, s := range servers[:n] {
			list = append(list, s.addr)
		}
		return list
	}
	var results []result
	run := func(name string, f func(lib library) (result, bool)) {
		if o.only != "" && !strings.Contains(name, o.only) {
			return
		}
		fmt.Fprintf(os.Stderr, "running %s...\n", name)
		for _, lib := range libraries {
			if r, ok := f(lib); ok {
				results = append(results, r)
			}
		}
	}
	run("uncontended", func(lib library) (result, bool) {
		n := min(3, lib.maxN)
		return uncontended(lib, addrs(n), servers[:n], o.duration), true
	})
	for _, workers := range []int{8, 32} {
		run(fmt.Sprintf("contended-%d", workers), func(lib library) (result, bool) {
			n := min(3, lib.maxN)
			return contended(lib, addrs(n), servers[:n], workers, o.duration), true
		})
	}
	run("contended-64x16", func(lib library) (result, bool) {
		n := min(3, lib.maxN)
		return contendedMany(lib, addrs(n), servers[:n], 64, 16, o.duration), true
	})
	run("semaphore-uncontended", func(lib library) (result, bool) {
		if lib.name != "redlock" {
			return result{}, false
		}
		return uncontendedOn("semaphore-uncontended", lib.name, newSemaphoreLocker(benchPermits), addrs(3), servers[:3], o.duration), true
	})
	run(fmt.Sprintf("semaphore-%d", benchPermits), func(lib library) (result, bool) {
		if lib.name != "redlock" {
			return result{}, false
		}
		return contendedOn(fmt.Sprintf("semaphore-%d", benchPermits), lib.name, newSemaphoreLocker(benchPermits), benchPermits,
			addrs(3), servers[:3], 4*benchPermits, o.duration), true
	})
	run(fmt.Sprintf("%d-mutexes", benchPermits), func(lib library) (result, bool) {
		if lib.name != "redlock" {
			return result{}, false
		}
		// The semaphore's baseline on this machine: as many mutexes as it
		// has permits, each contended by 4 of the 16 workers.
		made := 0
		newFor := func(addrs []string, name string) (locker, func(), error) {
			made++
			return lib.newFor(addrs, fmt.Sprintf("%s-%d", name, made%benchPermits))
		}
		return contendedOn(fmt.Sprintf("%d-mutexes", benchPermits), lib.name, newFor, benchPermits,
			addrs(3), servers[:3], 4*benchPermits, o.duration), true
	})
	run("degraded", func(lib library) (result, bool) {
		if lib.maxN < 5 || lib.name == "redsync 1ms" {
			return result{}, false
		}
		return degraded(lib, addrs(5), servers, o.duration), true
	})
	run("election-handover", func(lib library) (result, bool) {
		if lib.name != "redlock" {
			return result{}, false
		}
		// The Mutex's hand-off to its next waiter, in the same run, is
		// the goal's baseline.
		mutex := handover("mutex-handover", lib.newFor, addrs(3), servers[:3], 8, o.duration)
		fenced := handover("fenced-mutex-handover", newFencedLocker, addrs(3), servers[:3], 8, o.duration)
		results = append(results, mutex, fenced)
		return handover("election-handover", newTermLocker, addrs(3), servers[:3], 8, o.duration), true
	})
	run("election-observe", func(lib library) (result, bool) {
		if lib.name != "redlock" {
			return result{}, false
		}
		return observationLag(addrs(3), servers[:3], o.duration), true
	})
	run("elections-idle", func(lib library) (result, bool) {
		if lib.name != "redlock" {
			return result{}, false
		}
		r := idleElections(addrs(3), servers[:3], min(1000, o.manyLocks), 3*o.duration)
		results = append(results, r[:len(r)-1]...)
		return r[len(r)-1], true
	})
	run("many-locks", func(lib library) (result, bool) {
		if lib.name != "redlock" {
			return result{}, false
		}
		return manyHeld(addrs(3), servers[:3], o.manyLocks, 3*o.duration), true
	})
	return results
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func machine() string {
	return fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
}

func flush(servers []*server) {
	for _, s := range servers {
		rc := redis.NewClient(&redis.Options{Addr: s.addr})
		rc.FlushAll(context.Background())
		rc.Close()
	}
}

func percentile(durations []time.Duration, p float64) time.Duration {
	if len(durations) == 0 {
		return 0
	}
	slices.Sort(durations)
	return durations[min(len(durations)-1, int(float64(len(durations))*p))]
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// warmLocker empties the servers and makes a locker of lib that has run
// cycles Lock+Unlock cycles, so that connections and script caches are warm.
func warmLocker(newFor func(addrs []string, name string) (locker, func(), error), addrs []string, servers []*server, name string, cycles int) (locker, func(), error) {
	flush(servers)
	l, closeFn, err := newFor(addrs, name)
	if err != nil {
		return nil, nil, err
	}
	ctx := context.Background()
	for range cycles {
		if l.lock(ctx) == nil {
			l.unlock(ctx)
		}
	}
	return l, closeFn, nil
}

// uncontended runs Lock+Unlock in one goroutine.
func uncontended(lib library, addrs []string, servers []*server, duration time.Duration) result {
	return uncontendedOn("uncontended", lib.name, lib.newFor, addrs, servers, duration)
}

// uncontendedOn runs Lock+Unlock of a locker from newFor in one goroutine.
func uncontendedOn(name, libName string, newFor func(addrs []string, name string) (locker, func(), error),
	addrs []string, servers []*server, duration time.Duration) result {
	l, closeFn, err := warmLocker(newFor, addrs, servers, "bench-uncontended", 200)
	if err != nil {
		return result{Scenario: name, Library: libName, Notes: err.Error()}
	}
	defer closeFn()
	ctx := context.Background()
	counter := newCommandCounter(servers)
	defer counter.close()
	commandsBefore := counter.total()
	cpuBefore := counter.cpu()
	var lockTimes []time.Duration
	var failures int64
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	for time.Since(start) < duration {
		t0 := time.Now()
		if err := l.lock(ctx); err != nil {
			failures++
			continue
		}
		lockTimes = append(lockTimes, time.Since(t0))
		if err := l.unlock(ctx); err != nil {
			failures++
		}
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	cycles := int64(len(lockTimes))
	// lockTimes grows by appends; its own allocations are few (log2 of the count).
	return result{
		Scenario: name, Library: libName, Nodes: len(addrs), Workers: 1,
		Seconds: elapsed.Seconds(), Cycles: cycles, PerSecond: float64(cycles) / elapsed.Seconds(),
		LockP50us: micros(percentile(lockTimes, 0.5)), LockP99us: micros(percentile(lockTimes, 0.99)),
		AllocsPerCycle: float64(after.Mallocs-before.Mallocs) / float64(cycles),
		CommandsPerCS:  float64(counter.since(commandsBefore)) / float64(cycles),
		ServerCPUus:    micros(counter.cpu()-cpuBefore) / float64(cycles),
		Failures:       failures,
	}
}

// contended runs workers, each with its own locker, on one lock with a 1ms
// critical section.
func contended(lib library, addrs []string, servers []*server, workers int, duration time.Duration) result {
	return contendedOn(fmt.Sprintf("contended-%d", workers), lib.name, lib.newFor, 1, addrs, servers, workers, duration)
}

// contendedOn runs workers, each with a locker of its own from newFor, on
// one lock that up to capacity workers may hold at once, with a 1ms
// critical section.
func contendedOn(name, libName string, newFor func(addrs []string, name string) (locker, func(), error), capacity int,
	addrs []string, servers []*server, workers int, duration time.Duration) result {
	flush(servers)
	lockers := make([]locker, workers)
	for i := range lockers {
		l, closeFn, err := newFor(addrs, "bench-contended")
		if err != nil {
			return result{Scenario: name, Library: libName, Notes: err.Error()}
		}
		defer closeFn()
		lockers[i] = l
	}
	return contend(name, libName, lockers, capacity, servers, duration)
}

// contendedMany runs workers, each with lockers of its own on names locks
// over one set of connections, each section on a lock picked at random,
// with a 1ms critical section: what a fleet of hot locks costs.
func contendedMany(lib library, addrs []string, servers []*server, workers, names int, duration time.Duration) result {
	name := fmt.Sprintf("contended-%dx%d", workers, names)
	flush(servers)
	lockNames := make([]string, names)
	for i := range lockNames {
		lockNames[i] = fmt.Sprintf("bench-hot-%d", i)
	}
	inside := make([]atomic.Int64, names)
	var violations atomic.Int64
	lockers := make([]locker, workers)
	for i := range lockers {
		set, closeFn, err := lib.newSet(addrs, lockNames)
		if err != nil {
			return result{Scenario: name, Library: lib.name, Notes: err.Error()}
		}
		defer closeFn()
		lockers[i] = &pickLocker{set: set, inside: inside, violations: &violations}
	}
	r := contend(name, lib.name, lockers, names, servers, duration)
	r.Violations += violations.Load()
	r.Retake = 0 // a worker's sections are on different locks
	return r
}

// pickLocker takes one of its locks, picked at random, and counts a
// second holder of a lock as a violation.
type pickLocker struct {
	set        []locker
	inside     []atomic.Int64 // each lock's holders, over every worker
	violations *atomic.Int64
	held       int
}

func (p *pickLocker) lock(ctx context.Context) error {
	k := mathrand.IntN(len(p.set))
	if err := p.set[k].lock(ctx); err != nil {
		return err
	}
	if p.inside[k].Add(1) > 1 {
		p.violations.Add(1)
	}
	p.held = k
	return nil
}

func (p *pickLocker) unlock(ctx context.Context) error {
	p.inside[p.held].Add(-1)
	return p.set[p.held].unlock(ctx)
}

// contend runs a worker for each locker, any capacity of which may hold at
// once, with a 1ms critical section, and measures the run.
func contend(name, libName string, lockers []locker, capacity int, servers []*server, duration time.Duration) result {
	workers := len(lockers)
	counter := newCommandCounter(servers)
	defer counter.close()
	commandsBefore := counter.total()
	cpuBefore := counter.cpu()

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	c := &contention{capacity: int64(capacity), counts: make([]int64, workers), waits: make([][]time.Duration, workers)}
	c.lastHolder.Store(-1)
	start := time.Now()
	var wg sync.WaitGroup
	for i, l := range lockers {
		wg.Go(func() { c.work(ctx, i, l) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	var total int64
	var allWaits []time.Duration
	for i := range c.counts {
		total += c.counts[i]
		allWaits = append(allWaits, c.waits[i]...)
	}
	serverCPU := counter.cpu() - cpuBefore
	return result{
		Scenario: name, Library: libName, Nodes: len(servers), Workers: workers,
		Seconds: elapsed.Seconds(), Cycles: total, PerSecond: float64(total) / elapsed.Seconds(),
		WaitP99ms:     float64(percentile(allWaits, 0.99).Microseconds()) / 1e3,
		Fairness:      jain(c.counts),
		Retake:        float64(c.retakes.Load()) / math.Max(1, float64(total)),
		CommandsPerCS: float64(counter.since(commandsBefore)) / math.Max(1, float64(total)),
		ServerCPUus:   micros(serverCPU) / math.Max(1, float64(total)),
		Failures:      c.failures.Load(), Violations: c.violations.Load(),
	}
}

// contention is what the workers of a contended run share.
type contention struct {
	capacity                              int64 // holders allowed at once
	inside, violations, failures, retakes atomic.Int64
	lastHolder                            atomic.Int64
	counts                                []int64           // by worker: critical sections
	waits                                 [][]time.Duration // by worker: from Lock to holding
}

// work is worker i's loop: lock, a 1ms critical section, unlock, until ctx
// ends.
func (c *contention) work(ctx context.Context, i int, l locker) {
	for ctx.Err() == nil {
		t0 := time.Now()
		if err := l.lock(ctx); err != nil {
			if ctx.Err() == nil {
				c.failures.Add(1)
			}
			continue
		}
		c.waits[i] = append(c.waits[i], time.Since(t0))
		if c.inside.Add(1) > c.capacity {
			c.violations.Add(1)
		}
		if c.lastHolder.Swap(int64(i)) == int64(i) {
			c.retakes.Add(1)
		}
		time.Sleep(time.Millisecond)
		c.inside.Add(-1)
		c.counts[i]++
		if err := l.unlock(context.Background()); err != nil {
			c.failures.Add(1)
		}
	}
}

// jain is Jain's fairness index: 1 when every worker got the same share.
func jain(counts []int64) float64 {
	var sum, squares float64
	for _, c := range counts {
		sum += float64(c)
		squares += float64(c) * float64(c)
	}
	if squares == 0 {
		return 0
	}
	return sum * sum / (float64(len(counts)) * squares)
}

// degraded runs Lock+Unlock with one of five servers frozen by SIGSTOP.
func degraded(lib library, addrs []string, servers []*server, duration time.Duration) result {
	l, closeFn, err := warmLocker(lib.newFor, addrs, servers, "bench-degraded", 50)
	if err != nil {
		return result{Scenario: "degraded", Library: lib.name, Notes: err.Error()}
	}
	defer closeFn()
	ctx := context.Background()
	servers[4].freeze()
	defer servers[4].unfreeze()
	var lockTimes, unlockTimes []time.Duration
	var failures int64
	start := time.Now()
	for time.Since(start) < duration {
		t0 := time.Now()
		if err := l.lock(ctx); err != nil {
			failures++
			continue
		}
		t1 := time.Now()
		lockTimes = append(lockTimes, t1.Sub(t0))
		if err := l.unlock(ctx); err != nil {
			failures++
		}
		unlockTimes = append(unlockTimes, time.Since(t1))
	}
	elapsed := time.Since(start)
	return result{
		Scenario: "degraded", Library: lib.name, Nodes: len(addrs), Workers: 1,
		Seconds: elapsed.Seconds(), Cycles: int64(len(lockTimes)), PerSecond: float64(len(lockTimes)) / elapsed.Seconds(),
		LockP50us: micros(percentile(lockTimes, 0.5)), LockP99us: micros(percentile(lockTimes, 0.99)),
		UnlockP99us: micros(percentile(unlockTimes, 0.99)),
		Failures:    failures, Notes: "server 5 of 5 frozen (SIGSTOP)",
	}
}

// manyHeld holds many locks at once on one Client and measures what the
// watchdogs cost: process CPU and Redis commands per second.
func manyHeld(addrs []string, servers []*server, count int, hold time.Duration) result {
	flush(servers)
	var urls []string
	for _, addr := range addrs {
		urls = append(urls, "redis://"+addr+"/0")
	}
	client, err := redlock.Dial(urls)
	if err != nil {
		return result{Scenario: "many-locks", Library: "redlock", Notes: err.Error()}
	}
	defer client.Close()
	mutexes := make([]*redlock.Mutex, count)
	ctx := context.Background()
	var failures int64
	for i := range mutexes {
		mutexes[i] = client.NewMutex(fmt.Sprintf("bench-many-%d", i))
		if _, err := mutexes[i].LockContext(ctx); err != nil {
			failures++
		}
	}
	counter := newCommandCounter(servers)
	defer counter.close()
	idle := measureIdle(counter, hold)
	lost := 0
	for _, m := range mutexes {
		if m.Until().IsZero() {
			lost++
		}
		m.Unlock()
	}
	return result{
		Scenario: "many-locks", Library: "redlock", Nodes: len(addrs), Workers: count,
		Seconds: idle.elapsed.Seconds(), Failures: failures + int64(lost),
		Notes: fmt.Sprintf("%d locks held %s, %d lost", count, idle, lost),
	}
}

// idleCost is what a Client that only holds (or watches) costs over a
// while: its CPU, and the commands the servers ran.
type idleCost struct {
	elapsed, cpu      time.Duration
	commands, scripts int64
}

// measureIdle measures the cost of hold spent idle.
func measureIdle(counter *commandCounter, hold time.Duration) idleCost {
	commandsBefore := counter.total()
	scriptsBefore := counter.calls("evalsha", "eval")
	cpuBefore := cpuTime()
	start := time.Now()
	time.Sleep(hold)
	return idleCost{
		elapsed:  time.Since(start),
		cpu:      cpuTime() - cpuBefore,
		commands: counter.since(commandsBefore),
		scripts:  counter.calls("evalsha", "eval") - scriptsBefore,
	}
}

func (c idleCost) String() string {
	secs := c.elapsed.Seconds()
	return fmt.Sprintf("%.0fs, TTL 8s: CPU %.1f%% of one core, %.1f script calls/s, %.0f Redis commands/s counting those scripts make",
		secs, 100*c.cpu.Seconds()/secs, float64(c.scripts)/secs, float64(c.commands)/secs)
}

func cpuTime() time.Duration {
	var usage syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

func printTable(results []result) {
	fmt.Println("| scenario | library | nodes | workers | cycles/s | Lock p50 µs | Lock p99 µs | Unlock p99 µs | wait p99 ms | allocs/cycle | fairness | re-take | cmds/CS | server CPU/CS µs | failures | violations | notes |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	blank := func(v float64, format string) string {
		if v == 0 {
			return ""
		}
		return fmt.Sprintf(format, v)
	}
	for _, r := range results {
		fmt.Printf("| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %s |\n",
			r.Scenario, r.Library, r.Nodes, r.Workers, blank(r.PerSecond, "%.0f"), blank(r.LockP50us, "%.0f"), blank(r.LockP99us, "%.0f"),
			blank(r.UnlockP99us, "%.0f"), blank(r.WaitP99ms, "%.1f"), blank(r.AllocsPerCycle, "%.0f"), blank(r.Fairness, "%.2f"),
			blank(r.Retake, "%.2f"), blank(r.CommandsPerCS, "%.1f"), blank(r.ServerCPUus, "%.0f"), r.Failures, r.Violations, r.Notes)
	}
}

// writeHeapProfile writes the allocations made so far to path.
func writeHeapProfile(path string) {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		f.Close()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchmarks:", err)
	}
}
