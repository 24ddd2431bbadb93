package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

const (
	electName  = "integration-election"
	electTTL   = time.Second
	electGuard = 2 * electTTL
	// registerKey, on server registerServer (not a master of the
	// election), is the resource the leaders write, fenced by term.
	registerKey    = "fenced-register"
	registerServer = nodeCount - 1
)

// registerWrite stores a term's write only if no later term has written:
// the resource's side of fencing. It returns 1 if stored, 0 if refused.
var registerWrite = redis.NewScript(`
local last = tonumber(redis.call('HGET', KEYS[1], 'term') or '0')
if tonumber(ARGV[1]) < last then
  return 0
end
redis.call('HSET', KEYS[1], 'term', ARGV[1], 'writer', ARGV[2])
return 1`)

// electWorkerParams tells a candidate process what to do.
type electWorkerParams struct {
	URLs     []string
	Register string // the register's address
	Until    int64  // monotonic time at which to stop
	Out      string
}

func (p *electWorkerParams) out() string { return p.Out }

// electEvent is a line of a candidate's log.
type electEvent struct {
	PID  int
	What string // "lead", "write", "woke", "ended"
	Term uint64
	At   int64 // monotonic
	// Done is whether the term's context had ended; Stored whether the
	// register took the write.
	Done, Stored bool
}

// TestElectionWorker is the body of a candidate process; it does nothing in
// a normal test run. It campaigns, and while it leads it writes its term to
// the register every 50ms. Woken from a stop longer than the TTL, it notes
// whether its term's context had ended, and writes with its term once more
// anyway, as a leader that has not looked would.
func TestElectionWorker(t *testing.T) {
	var p electWorkerParams
	out := startWorker(t, "REDLOCK_ELECTION_WORKER", "runs only as a candidate process, started by TestElectionAcrossProcesses", &p)
	enc := json.NewEncoder(out) // unbuffered: a SIGKILL loses nothing written
	note := func(ev electEvent) {
		ev.PID, ev.At = os.Getpid(), monotonic()
		enc.Encode(ev)
	}
	redis.SetLogger(quietLogger{})
	client, err := redlock.Dial(p.URLs, redlock.WithTTL(electTTL), redlock.WithRestartGuard(electGuard), redlock.WithLogger(slogDiscard))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	register := redis.NewClient(&redis.Options{Addr: p.Register})
	defer register.Close()
	write := func(term uint64) bool {
		stored, err := registerWrite.Run(context.Background(), register, []string{registerKey}, term, os.Getpid()).Int()
		return err == nil && stored == 1
	}
	e := client.NewElection(electName)
	for monotonic() < p.Until {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(p.Until-monotonic()))
		term, err := e.Campaign(ctx, strconv.Itoa(os.Getpid()))
		cancel()
		if err != nil {
			continue
		}
		note(electEvent{What: "lead", Term: term.Number()})
		prev := monotonic() // when the last round began
		for monotonic() < p.Until {
			if now := monotonic(); now-prev > int64(electTTL) {
				// A round takes 50ms: this one was stopped. Look, then
				// write as a leader that had not looked would.
				note(electEvent{What: "woke", Term: term.Number(), Done: term.Context().Err() != nil})
				note(electEvent{What: "write", Term: term.Number(), Done: term.Context().Err() != nil, Stored: write(term.Number())})
			}
			prev = monotonic()
			if term.Context().Err() != nil {
				break
			}
			note(electEvent{What: "write", Term: term.Number(), Stored: write(term.Number())})
			select {
			case <-time.After(50 * time.Millisecond):
			case <-term.Context().Done():
			}
		}
		note(electEvent{What: "ended", Term: term.Number(), Done: term.Context().Err() != nil})
		term.Resign(context.Background())
	}
}

// startElectWorker runs this binary as a candidate process with p.
func startElectWorker(t *testing.T, p electWorkerParams) *exec.Cmd {
	t.Helper()
	params, _ := json.Marshal(p)
	cmd := exec.Command(os.Args[0], "-test.run=^TestElectionWorker$", "-test.count=1")
	cmd.Env = append(os.Environ(), "REDLOCK_ELECTION_WORKER="+string(params))
	cmd.Stderr = os.Stderr
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

// readElectEvents reads a candidate's log.
func readElectEvents(t *testing.T, path string) []electEvent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var events []electEvent
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		var ev electEvent
		if err := json.Unmarshal(scanner.Bytes(), &ev); err == nil {
			events = append(events, ev)
		}
	}
	return events
}

// Candidates in three processes over three masters. The leader's process is
// stopped (SIGSTOP) for longer than the TTL: another takes over, and when
// the stopped one wakes, its term's context has already ended and its write
// with its old term is refused by the register that has seen the next term.
// Then the leader is killed, and another takes over within about a TTL; a
// master is killed and restarted empty. Terms increase in the order they
// began, and the register never takes a write of an earlier term than one
// it holds.
func TestElectionAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process election test skipped in -short mode")
	}
	begin(t)
	defer restore(t)
	admin := suite.clients(t, nodeCount)
	admin[registerServer].Del(t.Context(), registerKey)
	dir := t.TempDir()
	start := monotonic()
	until := start + int64(14*time.Second)
	urls := suite.urls(3)
	workers := map[int]*exec.Cmd{}
	for i := range 3 {
		cmd := startElectWorker(t, electWorkerParams{URLs: urls, Register: suite.servers[registerServer].addr(), Until: until,
			Out: filepath.Join(dir, fmt.Sprintf("candidate-%d.jsonl", i))})
		workers[cmd.Process.Pid] = cmd
	}
	watcher, err := redlock.Dial(urls, redlock.WithTTL(electTTL), redlock.WithLogger(slogDiscard))
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	e := watcher.NewElection(electName)
	// leader waits for a leader other than not, and returns its pid.
	leader := func(not int) (int, redlock.Leader) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			l, err := e.Leader(t.Context())
			if pid, _ := strconv.Atoi(l.Value); err == nil && pid != 0 && pid != not {
				return pid, l
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no leader other than %d within 10s", not)
		return 0, redlock.Leader{}
	}
	elapsed := func() string { return time.Duration(monotonic() - start).Round(time.Millisecond).String() }

	stopped, first := leader(0)
	time.Sleep(300 * time.Millisecond) // it writes a few times
	workers[stopped].Process.Signal(syscall.SIGSTOP)
	stoppedAt := monotonic()
	t.Logf("%s: SIGSTOP to the leader, pid %d, term %d", elapsed(), stopped, first.Term)
	successor, second := leader(stopped)
	t.Logf("%s: pid %d leads in term %d", elapsed(), successor, second.Term)
	time.Sleep(time.Duration(stoppedAt + int64(5*electTTL/2) - monotonic())) // stopped for 2.5 TTLs in all
	workers[stopped].Process.Signal(syscall.SIGCONT)
	t.Logf("%s: SIGCONT to pid %d", elapsed(), stopped)
	time.Sleep(500 * time.Millisecond)

	killed, third := leader(0)
	workers[killed].Process.Kill()
	workers[killed].Wait()
	killedAt := monotonic()
	t.Logf("%s: SIGKILL to the leader, pid %d, term %d", elapsed(), killed, third.Term)
	next, fourth := leader(killed)
	takeover := time.Duration(monotonic() - killedAt)
	t.Logf("%s: pid %d leads in term %d, %v after the kill", elapsed(), next, fourth.Term, takeover)
	if takeover > electTTL+time.Second {
		t.Errorf("the next leader took over %v after the leader was killed; want about a TTL (%v)", takeover, electTTL)
	}

	if err := suite.kill(1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := suite.restart(1); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: master 1 killed and restarted empty", elapsed())
	time.Sleep(2 * electTTL)
	if _, now := leader(0); now.Term != fourth.Term {
		t.Errorf("term %d leads %v after a master's restart; want term %d still, held on the other two", now.Term, 2*electTTL, fourth.Term)
	}

	for pid, cmd := range workers {
		if pid == killed {
			continue
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("candidate %d: %v", pid, err)
		}
	}
	var events []electEvent
	for i := range 3 {
		events = append(events, readElectEvents(t, filepath.Join(dir, fmt.Sprintf("candidate-%d.jsonl", i)))...)
	}
	checkElectEvents(t, events, stopped, first.Term)
}

// checkElectEvents checks the candidates' logs: terms increase in the order
// they began; the stopped leader woke with its term ended, and its write
// then was refused; every write the register took was of a term at least
// as large as every write it had taken before.
func checkElectEvents(t *testing.T, events []electEvent, stopped int, stoppedTerm uint64) {
	t.Helper()
	sortEvents(events)
	var lastLead, lastStored uint64
	terms, woke := 0, false
	for _, ev := range events {
		switch {
		case ev.What == "lead":
			terms++
			if ev.Term <= lastLead {
				t.Errorf("pid %d began term %d after term %d had begun", ev.PID, ev.Term, lastLead)
			}
			lastLead = ev.Term
		case ev.What == "woke" && ev.PID == stopped:
			woke = true
			if !ev.Done {
				t.Errorf("the stopped leader (pid %d) woke with its term %d's context live", stopped, ev.Term)
			}
		case ev.What == "write" && ev.Stored:
			if ev.Term < lastStored {
				t.Errorf("the register took a write of term %d after one of term %d", ev.Term, lastStored)
			}
			lastStored = ev.Term
		}
	}
	var stale []string
	for _, ev := range events {
		if ev.PID == stopped && ev.Term == stoppedTerm && ev.What == "write" && ev.Done {
			stale = append(stale, fmt.Sprintf("stored=%v", ev.Stored))
			if ev.Stored {
				t.Errorf("the register took the stopped leader's write of term %d after it woke", ev.Term)
			}
		}
	}
	if !woke || len(stale) == 0 {
		t.Errorf("the stopped leader logged no wake-up (%v) or no write after it (%v): the test tested nothing", woke, stale)
	}
	t.Logf("%d terms, up to %d; the stopped leader's writes after it woke: %s", terms, lastLead, strings.Join(stale, ", "))
}

// sortEvents sorts events by time.
func sortEvents(events []electEvent) {
	for i := 1; i < len(events); i++ {
		for j := i; j > 0 && events[j].At < events[j-1].At; j-- {
			events[j], events[j-1] = events[j-1], events[j]
		}
	}
}
