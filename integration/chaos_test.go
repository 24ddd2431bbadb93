package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
	"golang.org/x/sys/unix"
)

// The chaos suite runs workers in separate OS processes (this test binary,
// run again as TestChaosWorker) that take one lock over the 5 containers,
// while the test injects a fault. Each critical section is recorded with the
// shared monotonic clock and its fencing token; a checker then looks for
// overlapping sections and tokens out of order.

const (
	chaosTTL      = time.Second
	chaosProcs    = 3 // worker processes
	chaosPerProc  = 2 // goroutines per worker process, each with its own Mutex
	chaosLock     = "chaos"
	chaosFenceKey = "chaos:fenced"
	chaosOverKey  = "chaos:over" // set in the resource when workers should stop

	chaosGuard       = 2 * chaosTTL // the restart guard, where a scenario uses it
	chaosWaitTimeout = 300 * time.Millisecond
	chaosNodeTimeout = chaosTTL / 10 // the default node timeout
	// chaosRoundSlack allows for the rounds themselves on a loaded 2-core
	// machine, where every worker runs under -race: with two links cut, a
	// round needs all three other servers to answer within the node
	// timeout, and a holder that misses it loses the lock at its deadline.
	chaosRoundSlack = 20 * chaosNodeTimeout
)

// monotonic reads CLOCK_MONOTONIC, which every process on the machine shares.
func monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

// workerParams tells a worker process what to do.
type workerParams struct {
	URLs     []string
	Resource string // address of the fenced resource's Redis
	Guard    bool   // use the restart guard
	HoldMin  time.Duration
	HoldMax  time.Duration
	Until    int64 // monotonic deadline for starting sections, if chaosOverKey is not set first
	Out      string
}

func (p *workerParams) out() string { return p.Out }

// section is one critical section as a worker saw it.
type section struct {
	PID     int
	Token   uint64
	Enter   int64 // monotonic ns
	Exit    int64
	HeldEnd int64 // when held ended, if before Exit; else 0
	// Writes to the fenced resource at entry and just before exit.
	FirstAccepted, LastAccepted bool
}

// liveEnd is when the holder stopped being entitled to the section.
func (s section) liveEnd() int64 {
	if s.HeldEnd > 0 && s.HeldEnd < s.Exit {
		return s.HeldEnd
	}
	return s.Exit
}

// fencedWrite stores a token in the resource unless a larger one was stored
// before: the resource a fencing token protects.
var fencedWrite = redis.NewScript(`
if tonumber(ARGV[1]) < tonumber(redis.call('GET', KEYS[1]) or '0') then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1`)

// chaosSection takes the lock, writes to the fenced resource on entry and
// again just before leaving, and records the section; ok is false if the
// lock was not acquired.
func chaosSection(m *redlock.Mutex, resource *redis.Client, p workerParams) (s section, ok bool) {
	held, err := m.LockContext(context.Background())
	if err != nil {
		return s, false
	}
	s = section{PID: os.Getpid(), Token: m.Token(), Enter: monotonic()}
	workerTracer.event("enter", "token", s.Token)
	defer func() { workerTracer.event("exit", "token", s.Token, "heldEnd", s.HeldEnd) }()
	var heldEnd atomic.Int64
	stop := context.AfterFunc(held, func() { heldEnd.Store(monotonic()) })
	write := func() bool {
		ok, _ := fencedWrite.Run(context.Background(), resource, []string{chaosFenceKey}, s.Token).Bool()
		return ok
	}
	resource.Set(context.Background(), "chaos:holder", os.Getpid(), 0)
	s.FirstAccepted = write()
	hold := p.HoldMin + rand.N(p.HoldMax-p.HoldMin+1)
	select {
	case <-time.After(hold):
	case <-held.Done():
	}
	if held.Err() != nil {
		// Seen now; a process that was stopped sees it on waking.
		s.HeldEnd = monotonic()
	}
	// A write already under way when the lock was lost: the fenced
	// resource must turn it away.
	s.LastAccepted = write()
	s.Exit = monotonic()
	if s.HeldEnd == 0 {
		s.HeldEnd = heldEnd.Load()
	}
	stop()
	m.Unlock()
	return s, true
}

// TestChaosWorker is the body of a worker process; it does nothing in a
// normal test run.
func TestChaosWorker(t *testing.T) {
	var p workerParams
	out := startWorker(t, "REDLOCK_CHAOS_WORKER", "runs only as a chaos worker process, started by TestChaos", &p)
	redis.SetLogger(quietLogger{})
	// Quick retries, so that a second holder gets in as soon as the
	// algorithm lets it: the checker should see every unsafe window.
	opts := []redlock.Option{redlock.WithTTL(chaosTTL), redlock.WithFencing(), redlock.WithWaitTimeout(chaosWaitTimeout),
		redlock.WithRetryDelay(5 * time.Millisecond), redlock.WithRetryJitter(10 * time.Millisecond), redlock.WithLogger(slogDiscard)}
	if p.Guard {
		opts = append(opts, redlock.WithRestartGuard(chaosGuard))
	}
	workerTracer = newTracer(fmt.Sprintf("worker-%d.jsonl", os.Getpid()))
	defer workerTracer.close()
	opts = append(opts, workerTraceOptions(workerTracer)...)
	client, err := redlock.Dial(p.URLs, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	resource := redis.NewClient(&redis.Options{Addr: p.Resource})
	defer resource.Close()

	var mu sync.Mutex
	enc := json.NewEncoder(out)
	var wg sync.WaitGroup
	for range chaosPerProc {
		m := client.NewMutex(chaosLock)
		wg.Go(func() {
			for monotonic() < p.Until && resource.Exists(context.Background(), chaosOverKey).Val() == 0 {
				s, ok := chaosSection(m, resource, p)
				if !ok {
					continue
				}
				mu.Lock()
				enc.Encode(s)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// chaosEnv is what a scenario's fault works on.
type chaosEnv struct {
	t        *testing.T
	resource *redis.Client
	inspect  []*redis.Client
	proxies  []*faultProxy // the workers' links to the servers
	workers  []*exec.Cmd
	faultAt  atomic.Int64 // monotonic time of the fault that should cost a holder its lock
	sc       scenario
	tr       *tracer
}

func (e *chaosEnv) markFault() { e.faultAt.Store(monotonic()); e.tr.event("markFault") }

// newHolderBound is how long the lock may go without a new holder while a
// quorum of servers can be reached, as the algorithm allows: the holder
// inside may stay for its whole section (holdMax); a holder left with a
// minority keeps its keys until they expire (the TTL); a server restarted
// less than the guard ago does not vote; a waiter gives up after the wait
// timeout and queues again; and the rounds take their time
// (chaosRoundSlack).
func (e *chaosEnv) newHolderBound() time.Duration {
	bound := e.sc.holdMax + chaosTTL + chaosWaitTimeout + chaosRoundSlack
	if e.sc.guard {
		bound += chaosGuard
	}
	return bound
}

// waitNewHolder waits until a section starts after now and returns the
// holder's PID; the test fails if none does within newHolderBound.
func (e *chaosEnv) waitNewHolder() int {
	e.t.Helper()
	timeout := e.newHolderBound()
	e.resource.Del(context.Background(), "chaos:holder")
	e.tr.event("waitNewHolder")
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if pid, err := e.resource.Get(context.Background(), "chaos:holder").Int(); err == nil {
			e.tr.event("newHolder", "holder", pid)
			return pid
		}
		time.Sleep(2 * time.Millisecond)
	}
	e.tr.event("noNewHolder")
	e.t.Fatalf("no new holder within %v", timeout)
	return 0
}

// splitMajority cuts the links to servers 3 and 4 until a holder takes the
// lock on servers 0-2 only, then heals them: the next restart of one of 0-2
// leaves that holder with a minority.
func splitMajority(e *chaosEnv) {
	e.cut(3, 4)
	e.waitNewHolder()
	e.heal(3, 4)
}

func (e *chaosEnv) cut(servers ...int) {
	for _, i := range servers {
		e.proxies[i].setCut(true)
	}
	e.tr.event("cut", "servers", servers)
}

func (e *chaosEnv) heal(servers ...int) {
	for _, i := range servers {
		e.proxies[i].setCut(false)
	}
	e.tr.event("heal", "servers", servers)
}

func (e *chaosEnv) restart(i int) {
	e.t.Helper()
	e.tr.event("restart", "server", i)
	if err := suite.restart(i); err != nil {
		e.t.Fatal(err)
	}
	e.tr.event("restarted", "server", i)
}

func (e *chaosEnv) kill(i int) {
	e.t.Helper()
	e.tr.event("kill", "server", i)
	if err := suite.kill(i); err != nil {
		e.t.Fatal(err)
	}
	e.tr.event("killed", "server", i)
}

// scenario is one fault and what the algorithm promises under it.
type scenario struct {
	name     string
	guard    bool // workers use the restart guard
	aof      bool // server 2 keeps an AOF, fsync always
	duration time.Duration
	holdMin  time.Duration
	holdMax  time.Duration
	// exclusionUnsafe and fencingUnsafe say why the scenario breaks that
	// promise by design ("" if it does not): the checker must then be able
	// to catch it, and the report says whether it did.
	exclusionUnsafe string
	fencingUnsafe   string
	fault           func(e *chaosEnv)
}

// report is one row of the chaos table.
type report struct {
	Scenario        string
	Sections        int
	Overlaps        int
	TokenRegressed  int
	StaleRejected   int
	DetectLoss      time.Duration // fault to the first held context ending, if any
	Availability    float64
	ExclusionUnsafe string
	FencingUnsafe   string
}

func check(sections []section, start, end int64, faultAt int64) report {
	slices.SortFunc(sections, func(a, b section) int { return int(a.Enter - b.Enter) })
	r := report{Sections: len(sections), DetectLoss: -1}
	var maxEnd, covered, coveredTo int64
	for i, s := range sections {
		if i > 0 && s.Enter < maxEnd {
			r.Overlaps++
		}
		maxEnd = max(maxEnd, s.liveEnd())
		if i > 0 && s.Token <= sections[i-1].Token {
			r.TokenRegressed++
		}
		if !s.FirstAccepted {
			r.StaleRejected++
		}
		if !s.LastAccepted {
			r.StaleRejected++
		}
		from, to := max(s.Enter, coveredTo), s.liveEnd()
		if to > from {
			covered += to - from
			coveredTo = to
		}
		if faultAt > 0 && s.HeldEnd >= faultAt && s.HeldEnd < s.Exit {
			if d := time.Duration(s.HeldEnd - faultAt); r.DetectLoss < 0 || d < r.DetectLoss {
				r.DetectLoss = d
			}
		}
	}
	r.Availability = float64(covered) / float64(end-start)
	return r
}

// scenarios lists the chaos scenarios. It is one table, entry by entry, so
// that each scenario's fault reads next to its expectations; that makes it
// longer than a function usually is.
func scenarios() []scenario {
	short, long := 50*time.Millisecond, 150*time.Millisecond
	// holdLong keeps a holder inside while a server restarts, so that a
	// second holder can come in during its section.
	holdLong := [2]time.Duration{1500 * time.Millisecond, 2500 * time.Millisecond}
	// killAtOnce kills server 2 while a holder has the lock on servers 0-2
	// only, and restarts it at once without persistence.
	killAtOnce := func(e *chaosEnv) {
		// Twice, for two chances to see the unsafe window.
		for range 2 {
			splitMajority(e)
			e.markFault()
			e.kill(2)
			e.restart(2)
			time.Sleep(time.Second)
		}
	}
	return []scenario{
		{name: "baseline", duration: 4 * time.Second, holdMin: short, holdMax: long, fault: func(*chaosEnv) {}},
		{
			name: "kill, restart at once, no guard", duration: 10 * time.Second, holdMin: holdLong[0], holdMax: holdLong[1],
			exclusionUnsafe: "a restarted server forgot the holder's key and votes again at once",
			fencingUnsafe:   "the restarted server forgot its counter",
			fault:           killAtOnce,
		},
		{
			name: "kill, restart at once, guard", guard: true, duration: 10 * time.Second, holdMin: holdLong[0], holdMax: holdLong[1],
			// The guard keeps the restarted server from voting, but it
			// forgot its counters for good: once it votes again, a
			// quorum of it and two servers that missed the last token can
			// hand out a smaller one (the package docs, Fencing tokens).
			fencingUnsafe: "the restarted server forgot its counter, which the guard does not bring back",
			fault:         killAtOnce,
		},
		{
			name: "kill, restart after the TTL, no AOF", guard: true, duration: 8 * time.Second, holdMin: short, holdMax: long,
			fencingUnsafe: "the restarted server forgot its counter, and the next quorum is the restarted server and two that missed the last token",
			fault:         forgetCounter,
		},
		{
			name: "kill, restart after the TTL, AOF", guard: true, aof: true, duration: 8 * time.Second, holdMin: short, holdMax: long,
			fault: forgetCounter,
		},
		{
			name: "pause a minority", duration: 5 * time.Second, holdMin: short, holdMax: long,
			fault: func(e *chaosEnv) {
				suite.pause(e.t, 0, 1)
				time.Sleep(3 * time.Second)
				suite.resume(e.t, 0, 1)
			},
		},
		{
			name: "pause a majority", duration: 5 * time.Second, holdMin: holdLong[0], holdMax: holdLong[1],
			fault: func(e *chaosEnv) {
				e.waitNewHolder()
				e.markFault()
				suite.pause(e.t, 0, 1, 2)
			},
		},
		{
			name: "pause a majority, then thaw", duration: 6 * time.Second, holdMin: holdLong[0], holdMax: holdLong[1],
			fault: func(e *chaosEnv) {
				e.waitNewHolder()
				e.markFault()
				suite.pause(e.t, 0, 1, 2)
				time.Sleep(2 * chaosTTL)
				suite.resume(e.t, 0, 1, 2)
			},
		},
		{
			name: "latency and jitter on two links", duration: 5 * time.Second, holdMin: short, holdMax: long,
			fault: func(e *chaosEnv) {
				for _, i := range []int{0, 1} {
					e.proxies[i].delay.Store(int64(80 * time.Millisecond))
					e.proxies[i].jitter.Store(int64(120 * time.Millisecond))
				}
				time.Sleep(3 * time.Second)
				for _, i := range []int{0, 1} {
					e.proxies[i].delay.Store(0)
					e.proxies[i].jitter.Store(0)
				}
			},
		},
		{
			name: "holder paused past its TTL", duration: 6 * time.Second, holdMin: long, holdMax: 400 * time.Millisecond,
			exclusionUnsafe: "a paused process cannot see its held context end; fencing must turn it away",
			fault: func(e *chaosEnv) {
				pid := e.waitNewHolder()
				e.markFault()
				syscall.Kill(pid, syscall.SIGSTOP)
				time.Sleep(3 * chaosTTL)
				syscall.Kill(pid, syscall.SIGCONT)
			},
		},
	}
}

// forgetCounter makes a quorum that missed the last fencing token: with the
// links to servers 3 and 4 cut, holders record their tokens on 0-2 only; then
// 2 is killed and restarted after the TTL (the spec's delayed restart) while
// the links to 0 and 1 are cut, so that the next quorum is 2, 3 and 4.
func forgetCounter(e *chaosEnv) {
	e.cut(3, 4)
	e.waitNewHolder()
	time.Sleep(200 * time.Millisecond)
	e.kill(2)
	e.cut(0, 1) // before healing 3 and 4, so no newer token reaches them
	e.heal(3, 4)
	time.Sleep(chaosTTL + 200*time.Millisecond)
	e.restart(2)
	time.Sleep(2*chaosTTL + time.Second) // the guard passes; 2-4 elect holders
	e.heal(0, 1)
}

func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos suite skipped in -short mode")
	}
	resourceServer := &server{}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	resourceServer.port = port
	if err := suite.start(resourceServer, false); err != nil {
		t.Fatal(err)
	}
	defer suite.pool.Purge(resourceServer.resource)
	resource := redis.NewClient(&redis.Options{Addr: resourceServer.addr()})
	defer resource.Close()

	var reports []report
	for _, sc := range scenarios() {
		ok := t.Run(sc.name, func(t *testing.T) {
			r := runScenario(t, sc, resource)
			reports = append(reports, r)
			t.Logf("%d sections, %d overlaps, %d tokens out of order, %d stale writes rejected, loss detected after %v, availability %.0f%%",
				r.Sections, r.Overlaps, r.TokenRegressed, r.StaleRejected, r.DetectLoss, 100*r.Availability)
			if r.Sections < 2 {
				t.Errorf("%d critical sections completed; want at least 2", r.Sections)
			}
			if sc.exclusionUnsafe == "" && r.Overlaps > 0 {
				t.Errorf("%d overlapping critical sections; want 0", r.Overlaps)
			}
			if sc.fencingUnsafe == "" && r.TokenRegressed > 0 {
				t.Errorf("%d fencing tokens not larger than the one before; want 0", r.TokenRegressed)
			}
		})
		if !ok {
			break
		}
	}
	writeChaosTable(t, reports)
}

func runScenario(t *testing.T, sc scenario, resource *redis.Client) report {
	if sc.aof {
		if err := suite.replace(2, true); err != nil {
			t.Fatal(err)
		}
	}
	defer restore(t)
	suite.flush(t)
	if err := resource.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	env := &chaosEnv{t: t, resource: resource, inspect: suite.clients(t, nodeCount), sc: sc, tr: newTracer("test.jsonl")}
	defer env.tr.close()
	env.tr.event("scenario", "name", sc.name)
	sampleCtx, stopSampling := context.WithCancel(context.Background())
	var sampling sync.WaitGroup
	sampleServers(sampleCtx, env.tr, &sampling)
	defer sampling.Wait()
	defer stopSampling()
	var urls []string
	for _, s := range suite.servers {
		p := newFaultProxy(t, s.addr())
		env.proxies = append(env.proxies, p)
		urls = append(urls, "redis://"+p.addr()+"/0")
	}
	traceProxies(sampleCtx, env.tr, env.proxies, &sampling)
	dir := t.TempDir()
	start := monotonic()
	until := start + int64(sc.duration)
	for i := range chaosProcs {
		params, _ := json.Marshal(workerParams{
			URLs: urls, Resource: resource.Options().Addr, Guard: sc.guard,
			HoldMin: sc.holdMin, HoldMax: sc.holdMax, Until: until + int64(time.Minute),
			Out: filepath.Join(dir, fmt.Sprintf("worker-%d.jsonl", i)),
		})
		cmd := exec.Command(os.Args[0], "-test.run=^TestChaosWorker$", "-test.count=1")
		cmd.Env = append(os.Environ(), "REDLOCK_CHAOS_WORKER="+string(params))
		cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		env.workers = append(env.workers, cmd)
	}
	defer func() {
		for _, cmd := range env.workers {
			if cmd.ProcessState == nil {
				cmd.Process.Signal(syscall.SIGCONT)
				cmd.Process.Kill()
				cmd.Wait()
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)
	sc.fault(env)
	// A fault may outlast the scenario's duration; the workers run until
	// both are over, so that a wait for a new holder never outlives them.
	time.Sleep(time.Duration(until - monotonic()))
	if err := resource.Set(context.Background(), chaosOverKey, 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	for i, cmd := range env.workers {
		if err := cmd.Wait(); err != nil {
			t.Errorf("worker %d: %v", i, err)
		}
	}
	end := max(monotonic(), until)
	var sections []section
	for i := range chaosProcs {
		sections = append(sections, readSections(t, filepath.Join(dir, fmt.Sprintf("worker-%d.jsonl", i)))...)
	}
	r := check(sections, start, end, env.faultAt.Load())
	r.Scenario, r.ExclusionUnsafe, r.FencingUnsafe = sc.name, sc.exclusionUnsafe, sc.fencingUnsafe
	return r
}

// restore brings every server back: running, unpaused, without AOF.
func restore(t *testing.T) {
	for i, s := range suite.servers {
		suite.pool.Client.UnpauseContainer(s.resource.Container.ID)
		if ping(s.addr()) == nil && !strings.Contains(infoPersistence(s.addr()), "aof_enabled:1") {
			continue
		}
		if err := suite.replace(i, false); err != nil {
			t.Fatalf("restore server %d: %v", i, err)
		}
	}
}

func infoPersistence(addr string) string {
	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	return rc.Info(context.Background(), "persistence").Val()
}

func readSections(t *testing.T, path string) []section {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var sections []section
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		var s section
		if err := json.Unmarshal(scanner.Bytes(), &s); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		sections = append(sections, s)
	}
	return sections
}

// writeChaosTable writes the report as a Markdown table where
// REDLOCK_CHAOS_REPORT points, and logs it.
func writeChaosTable(t *testing.T, reports []report) {
	var b strings.Builder
	b.WriteString("| scenario | sections | overlaps | tokens out of order | stale writes rejected | loss detected after | availability | unsafe by design |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, r := range reports {
		detect := "—"
		if r.DetectLoss >= 0 {
			detect = r.DetectLoss.Round(time.Millisecond).String()
		}
		var unsafe []string
		if r.ExclusionUnsafe != "" {
			unsafe = append(unsafe, "exclusion: "+r.ExclusionUnsafe)
		}
		if r.FencingUnsafe != "" {
			unsafe = append(unsafe, "tokens: "+r.FencingUnsafe)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %s | %.0f%% | %s |\n", r.Scenario, r.Sections, r.Overlaps, r.TokenRegressed,
			r.StaleRejected, detect, 100*r.Availability, strings.Join(unsafe, "; "))
	}
	t.Log("\n" + b.String())
	if path := os.Getenv("REDLOCK_CHAOS_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// faultProxy forwards TCP to a server on loopback. While delay is set it holds
// back each chunk from the client by delay plus a random jitter; while cut,
// it drops every connection and refuses new ones, so that commands in flight
// are lost, as in a network partition (a paused server would run them later).
type faultProxy struct {
	listener      net.Listener
	delay, jitter atomic.Int64 // nanoseconds
	mu            sync.Mutex
	cut           bool
	conns         map[net.Conn]struct{}
	accepts       atomic.Int64 // connections accepted, for the trace
}

func newFaultProxy(t *testing.T, upstream string) *faultProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{listener: ln, conns: make(map[net.Conn]struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepts.Add(1)
			if p.isCut() {
				// Refused before it costs the server a connection: each
				// call to a cut server makes one, and under quick retries
				// they starve the links that are not cut.
				client.Close()
				continue
			}
			server, err := net.Dial("tcp", upstream)
			if err != nil || !p.track(client, server) {
				client.Close()
				if server != nil {
					server.Close()
				}
				continue
			}
			wg.Go(func() {
				io.Copy(client, server)
				client.Close()
			})
			wg.Go(func() {
				defer p.untrack(client, server)
				buf := make([]byte, 32<<10)
				for {
					n, err := client.Read(buf)
					if err != nil {
						return
					}
					if delay := time.Duration(p.delay.Load()); delay > 0 {
						time.Sleep(delay + rand.N(time.Duration(p.jitter.Load())+1))
					}
					if _, err := server.Write(buf[:n]); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.setCut(true)
		wg.Wait()
	})
	return p
}

func (p *faultProxy) isCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

// track registers a connection pair, unless the link is cut.
func (p *faultProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *faultProxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(p.conns, c)
	}
}

// setCut cuts the link (dropping every connection) or heals it.
func (p *faultProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
	}
}

func (p *faultProxy) addr() string { return p.listener.Addr().String() }

var slogDiscard = slog.New(slog.DiscardHandler)

// workerTracer traces a worker process, with REDLOCK_CHAOS_TRACE set.
var workerTracer *tracer
