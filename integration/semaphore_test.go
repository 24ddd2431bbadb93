package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

// The Semaphore's integration tests run holders in separate OS processes
// (this test binary, run again as TestSemaphoreWorker), over the five
// containers, while the test kills, pauses and restarts masters, or kills a
// holder process. Each permit's section is recorded with the shared
// monotonic clock; a sweep over the sections then counts the most that were
// live at once.

const (
	semTTL      = time.Second
	semPermits  = 2
	semProcs    = 3
	semPerProc  = 2 // goroutines per worker process, each with its own Semaphore
	semName     = "sem-chaos"
	semKillName = "sem-kill"
	// semGuard keeps a restarted master, which lost its slots, out of the
	// votes until every permit it granted has expired.
	semGuard = 2 * semTTL
)

// semWorkerParams tells a worker process what to do: "sections" takes and
// gives back permits until Until; "hold" takes one permit, reports each of
// its extensions, and holds it until the process is killed.
type semWorkerParams struct {
	Mode    string
	URLs    []string
	Name    string
	Permits int
	HoldMin time.Duration
	HoldMax time.Duration
	Until   int64 // monotonic
	Out     string
}

func (p *semWorkerParams) out() string { return p.Out }

// permitSection is one permit, from Acquire's return to Release, as a
// worker saw it.
type permitSection struct {
	PID     int
	Enter   int64 // monotonic ns
	Exit    int64
	HeldEnd int64 // when the permit's Context ended, if before Exit; else 0
}

// liveEnd is when the holder stopped being entitled to the permit.
func (s permitSection) liveEnd() int64 {
	if s.HeldEnd > 0 && s.HeldEnd < s.Exit {
		return s.HeldEnd
	}
	return s.Exit
}

// mostLive returns the most sections live at one moment. A section that
// ends at the instant another begins does not overlap it.
func mostLive(sections []permitSection) int {
	type edge struct {
		at    int64
		delta int
	}
	var edges []edge
	for _, s := range sections {
		edges = append(edges, edge{s.Enter, +1}, edge{s.liveEnd(), -1})
	}
	slices.SortFunc(edges, func(a, b edge) int {
		if a.at != b.at {
			return int(a.at - b.at)
		}
		return a.delta - b.delta // ends first
	})
	live, most := 0, 0
	for _, e := range edges {
		live += e.delta
		most = max(most, live)
	}
	return most
}

func TestMostLive(t *testing.T) {
	sections := []permitSection{{Enter: 0, Exit: 10}, {Enter: 5, Exit: 20, HeldEnd: 8}, {Enter: 8, Exit: 9}, {Enter: 9, Exit: 30}}
	if got := mostLive(sections); got != 2 {
		t.Errorf("mostLive = %d; want 2", got)
	}
	sections = append(sections, permitSection{Enter: 7, Exit: 8})
	if got := mostLive(sections); got != 3 {
		t.Errorf("mostLive with a third section at 7-8 = %d; want 3", got)
	}
}

// TestSemaphoreWorker is the body of a worker process; it does nothing in
// a normal test run.
func TestSemaphoreWorker(t *testing.T) {
	var p semWorkerParams
	out := startWorker(t, "REDLOCK_SEMAPHORE_WORKER", "runs only as a semaphore worker process, started by the Semaphore's integration tests", &p)
	redis.SetLogger(quietLogger{})
	opts := []redlock.Option{redlock.WithTTL(semTTL), redlock.WithRestartGuard(semGuard), redlock.WithLogger(slogDiscard),
		redlock.WithRetryDelay(5 * time.Millisecond), redlock.WithRetryJitter(10 * time.Millisecond)}
	var outMu sync.Mutex
	writeLine := func(line string) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintln(out, line) // unbuffered: a SIGKILL loses nothing written
	}
	if p.Mode == "hold" {
		opts = append(opts, redlock.WithObserver(&redlock.Observer{Extended: func(e redlock.ExtendedEvent) {
			if e.Outcome == redlock.ExtendOK {
				writeLine("extended " + strconv.FormatInt(monotonic(), 10))
			}
		}}))
	}
	client, err := redlock.Dial(p.URLs, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	switch p.Mode {
	case "hold":
		permit, err := client.NewSemaphore(p.Name, p.Permits).Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		writeLine("held " + strconv.FormatInt(monotonic(), 10))
		<-permit.Context().Done()
		t.Fatalf("the permit ended before the process was killed: %v", context.Cause(permit.Context()))
	case "sections":
		enc := json.NewEncoder(out)
		var wg sync.WaitGroup
		for range semPerProc {
			s := client.NewSemaphore(p.Name, p.Permits, redlock.WithWaitTimeout(300*time.Millisecond))
			wg.Go(func() {
				for monotonic() < p.Until {
					sec, ok := semSection(s, p)
					if !ok {
						continue
					}
					outMu.Lock()
					enc.Encode(sec)
					outMu.Unlock()
				}
			})
		}
		wg.Wait()
	default:
		t.Fatalf("unknown mode %q", p.Mode)
	}
}

// semSection takes a permit, holds it for a random time or until it is
// lost, and gives it back; ok is false if no permit was taken.
func semSection(s *redlock.Semaphore, p semWorkerParams) (sec permitSection, ok bool) {
	permit, err := s.Acquire(context.Background()) // the Semaphore's wait timeout bounds the wait
	if err != nil {
		return sec, false
	}
	sec = permitSection{PID: os.Getpid(), Enter: monotonic()}
	var heldEnd atomic.Int64
	stop := context.AfterFunc(permit.Context(), func() { heldEnd.Store(monotonic()) })
	select {
	case <-time.After(p.HoldMin + rand.N(p.HoldMax-p.HoldMin+1)):
	case <-permit.Context().Done():
	}
	if permit.Context().Err() != nil {
		sec.HeldEnd = monotonic() // a process that was stopped sees it on waking
	}
	sec.Exit = monotonic()
	if sec.HeldEnd == 0 {
		sec.HeldEnd = heldEnd.Load()
	}
	stop()
	permit.Release(context.Background())
	return sec, true
}

// startSemWorker runs this binary as a worker process with p.
func startSemWorker(t *testing.T, p semWorkerParams) *exec.Cmd {
	t.Helper()
	params, _ := json.Marshal(p)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSemaphoreWorker$", "-test.count=1")
	cmd.Env = append(os.Environ(), "REDLOCK_SEMAPHORE_WORKER="+string(params))
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGCONT)
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

// TestSemaphoreAcrossProcesses runs holders of 2 permits in three
// processes over five masters while masters are killed, restarted and
// paused (never more than two of them at once): no more than 2 permits may
// be live at any moment, and the permits must keep changing hands through
// the faults.
func TestSemaphoreAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process semaphore test skipped in -short mode")
	}
	suite.flush(t)
	defer restore(t)
	dir := t.TempDir()
	start := monotonic()
	const duration = 14 * time.Second
	until := start + int64(duration)
	var workers []*exec.Cmd
	for i := range semProcs {
		workers = append(workers, startSemWorker(t, semWorkerParams{
			Mode: "sections", URLs: suite.urls(nodeCount), Name: semName, Permits: semPermits,
			HoldMin: 5 * time.Millisecond, HoldMax: 150 * time.Millisecond, Until: until,
			Out: filepath.Join(dir, fmt.Sprintf("worker-%d.jsonl", i)),
		}))
	}
	var faults []int64 // monotonic times at which each fault ended
	step := func(what string, f func() error) {
		t.Helper()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%5.1fs %s", time.Duration(monotonic()-start).Seconds(), what)
	}
	time.Sleep(time.Second)
	step("kill master 0", func() error { return suite.kill(0) })
	time.Sleep(1500 * time.Millisecond)
	step("restart master 0 (empty)", func() error { return suite.restart(0) })
	faults = append(faults, monotonic())
	time.Sleep(time.Second)
	step("pause masters 1 and 2", func() error { suite.pause(t, 1, 2); return nil })
	time.Sleep(2 * time.Second)
	step("resume masters 1 and 2", func() error { suite.resume(t, 1, 2); return nil })
	faults = append(faults, monotonic())
	time.Sleep(time.Second)
	step("kill masters 3 and 4", func() error { return errors.Join(suite.kill(3), suite.kill(4)) })
	time.Sleep(1500 * time.Millisecond)
	step("restart masters 3 and 4 (empty)", func() error { return errors.Join(suite.restart(3), suite.restart(4)) })
	faults = append(faults, monotonic())
	for i, cmd := range workers {
		if err := cmd.Wait(); err != nil {
			t.Errorf("worker %d: %v", i, err)
		}
	}
	var sections []permitSection
	for i := range semProcs {
		sections = append(sections, readPermitSections(t, filepath.Join(dir, fmt.Sprintf("worker-%d.jsonl", i)))...)
	}
	most := mostLive(sections)
	lost := 0
	lostBySecond := map[int]int{}
	for _, s := range sections {
		if s.HeldEnd > 0 && s.HeldEnd < s.Exit {
			lost++
			lostBySecond[int((s.HeldEnd-start)/int64(time.Second))]++
		}
	}
	t.Logf("losses by second since the start: %v", lostBySecond)
	t.Logf("%d permits taken by %d processes, at most %d live at once, %d lost", len(sections), semProcs, most, lost)
	if most > semPermits {
		t.Errorf("up to %d permits were live at once; want at most %d", most, semPermits)
	}
	if most < semPermits {
		t.Errorf("at most %d permits were live at once; want %d to show that the semaphore shares its permits", most, semPermits)
	}
	for i, at := range faults {
		after := 0
		for _, s := range sections {
			if s.Enter > at {
				after++
			}
		}
		if after == 0 {
			t.Errorf("no permit was taken after fault %d ended", i+1)
		}
	}
	// Every worker released its permits before it exited.
	c := dial(t, nodeCount)
	status, err := c.NewSemaphore(semName, semPermits).Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if status.Held != 0 || status.Permits != semPermits {
		t.Errorf("Status after every worker exited = %+v; want 0 of %d held", status, semPermits)
	}
}

func readPermitSections(t *testing.T, path string) []permitSection {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var sections []permitSection
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		var s permitSection
		if err := json.Unmarshal(scanner.Bytes(), &s); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		sections = append(sections, s)
	}
	return sections
}

// holderReport reads what a "hold" worker wrote: when it took its permit,
// and its extensions.
func holderReport(path string) (held int64, extensions []int64) {
	data, _ := os.ReadFile(path)
	for line := range strings.Lines(string(data)) {
		what, at, ok := strings.Cut(strings.TrimSpace(line), " ")
		n, err := strconv.ParseInt(at, 10, 64)
		if !ok || err != nil {
			continue // a line cut short by the kill
		}
		switch what {
		case "held":
			held = n
		case "extended":
			if held > 0 {
				extensions = append(extensions, n)
			}
		}
	}
	return held, extensions
}

// TestSemaphoreHolderKilled kills a process that holds one of 2 permits,
// while this test holds the other, with SIGKILL just after an extension:
// the dead holder's permit must be taken again within one TTL of that
// extension, and not before its key could have expired.
func TestSemaphoreHolderKilled(t *testing.T) {
	begin(t)
	out := filepath.Join(t.TempDir(), "holder.txt")
	holder := startSemWorker(t, semWorkerParams{Mode: "hold", URLs: suite.urls(nodeCount), Name: semKillName, Permits: 2, Out: out})
	c := dial(t, nodeCount, redlock.WithTTL(semTTL))
	s := c.NewSemaphore(semKillName, 2)
	waitUntil(t, "the holder process to take its permit", func() bool { held, _ := holderReport(out); return held > 0 })
	mine, err := s.TryAcquire(t.Context())
	if err != nil {
		t.Fatalf("TryAcquire of the second permit: %v", err)
	}
	defer mine.Release(context.Background())
	if _, err := s.TryAcquire(t.Context()); !errors.Is(err, redlock.ErrTaken) {
		t.Fatalf("TryAcquire with both permits held = %v; want ErrTaken", err)
	}
	// Kill the holder just after an extension: the wait begins after its
	// second, so that its permit has been extended at least once.
	_, before := holderReport(out)
	waitUntil(t, "two more extensions of the holder's permit", func() bool {
		_, ext := holderReport(out)
		return len(ext) >= len(before)+2
	})
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	holder.Wait()
	_, extensions := holderReport(out)
	lastExtension := extensions[len(extensions)-1]
	var freeAt int64
	deadline := time.Now().Add(3 * semTTL)
	for time.Now().Before(deadline) {
		p, err := s.TryAcquire(t.Context())
		if err == nil {
			freeAt = monotonic()
			p.Release(t.Context())
			break
		}
		if !errors.Is(err, redlock.ErrTaken) {
			t.Fatalf("TryAcquire after the kill: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if freeAt == 0 {
		t.Fatalf("the killed holder's permit was not free %v after its last extension", time.Duration(monotonic()-lastExtension))
	}
	after := time.Duration(freeAt - lastExtension)
	t.Logf("the killed holder's permit was taken %v after its last extension (TTL %v)", after, semTTL)
	// Its key was set with the TTL at the server between the extension's
	// send and its reply; the polls add a few ms.
	if after > semTTL+150*time.Millisecond {
		t.Errorf("the permit was free %v after the last extension; want within one TTL (%v)", after, semTTL)
	}
	if after < semTTL-50*time.Millisecond {
		t.Errorf("the permit was free %v after the last extension, before its key could expire (TTL %v)", after, semTTL)
	}
}
