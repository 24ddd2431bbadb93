//go:build unix

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// COMMAND's exit status passes through, a signal that killed it comes out as
// 128+N, a COMMAND that cannot start gives 70, and in every case the key is
// gone from every master once redlock has exited.
func TestRunExitStatus(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	tests := []struct {
		name    string
		command []string
		want    int
	}{
		{"success", []string{"true"}, 0},
		{"exit 3", []string{"sh", "-c", "exit 3"}, 3},
		{"SIGKILL", []string{"sh", "-c", "kill -KILL $$"}, 128 + 9},
		{"SIGTERM", []string{"sh", "-c", "kill -TERM $$"}, 128 + 15},
		{"not found", []string{filepath.Join(t.TempDir(), "no-such-command")}, exitFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, p := runRedlock(t, env, append([]string{"run", "status-" + tt.name, "--"}, tt.command...)...)
			if code != tt.want {
				t.Errorf("redlock run -- %q exited %d; want %d\nstderr:\n%s", tt.command, code, tt.want, p.stderr())
			}
			if n := keyHolders(t, masters, "status-"+tt.name); n != 0 {
				t.Errorf("the key is on %d masters after redlock exited; want 0", n)
			}
		})
	}
}

// interval is one COMMAND's run, from the times it wrote in its log.
type interval struct {
	start, end time.Time
	pid        string
}

// Two redlock run on one name, started together, run their commands one
// after the other: no two commands' [start, end] intervals overlap. The gap
// from one command's end to the next one's start is logged.
func TestRunNeverOverlaps(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	log := filepath.Join(t.TempDir(), "log")
	// Each command appends "start NS PID" and "end NS PID" to the log,
	// with times from date, so that they are the command's own.
	script := `echo "start $(date +%s%N) $$" >> "$1"; sleep 0.2; echo "end $(date +%s%N) $$" >> "$1"`
	const rounds, together = 4, 2
	for range rounds {
		var procs []*proc
		for range together {
			procs = append(procs, start(t, env, "run", "overlap", "--", "sh", "-c", script, "sh", log))
		}
		for _, p := range procs {
			if code := p.wait(30 * time.Second); code != 0 {
				t.Fatalf("redlock run exited %d; want 0\nstderr:\n%s", code, p.stderr())
			}
		}
	}
	intervals := readIntervals(t, log)
	if len(intervals) != rounds*together {
		t.Fatalf("%d commands ran; want %d", len(intervals), rounds*together)
	}
	var gaps []string
	for i := 1; i < len(intervals); i++ {
		prev, next := intervals[i-1], intervals[i]
		if next.start.Before(prev.end) {
			t.Errorf("command %s started at %v, before command %s ended at %v", next.pid, next.start.Format(time.StampMicro), prev.pid, prev.end.Format(time.StampMicro))
		}
		if i%together != 0 { // within a round: the second waited for the first
			gap := next.start.Sub(prev.end)
			gaps = append(gaps, gap.Round(100*time.Microsecond).String())
			// Woken by the release, not by polling, which while queued
			// is every 500ms to 1s.
			if gap > 2*time.Second {
				t.Errorf("the queued command started %v after the first ended; want well under a second", gap)
			}
		}
	}
	t.Logf("gap from one command's end to the queued one's start: %s", strings.Join(gaps, ", "))
	if n := keyHolders(t, masters, "overlap"); n != 0 {
		t.Errorf("the key is on %d masters after every redlock exited; want 0", n)
	}
}

// readIntervals reads the log of TestRunNeverOverlaps, sorted by start.
func readIntervals(t *testing.T, log string) []interval {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	byPid := map[string]*interval{}
	var order []*interval
	for line := range strings.Lines(string(data)) {
		var what, pid string
		var ns int64
		if _, err := fmt.Sscan(line, &what, &ns, &pid); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		iv := byPid[pid]
		if iv == nil {
			iv = &interval{pid: pid}
			byPid[pid] = iv
			order = append(order, iv)
		}
		switch what {
		case "start":
			iv.start = time.Unix(0, ns)
		case "end":
			iv.end = time.Unix(0, ns)
		}
	}
	out := make([]interval, 0, len(order))
	for _, iv := range order {
		if iv.start.IsZero() || iv.end.IsZero() {
			t.Fatalf("command %s logged start %v and end %v; want both", iv.pid, iv.start, iv.end)
		}
		out = append(out, *iv)
	}
	slices.SortFunc(out, func(a, b interval) int { return a.start.Compare(b.start) })
	return out
}

// holdLock starts a redlock run that holds name with a command that prints
// "ready" and then sleeps, and returns once the command is running.
func holdLock(t *testing.T, env []string, name string, flags ...string) *proc {
	t.Helper()
	args := append(append([]string{"run"}, flags...), name, "--", "sh", "-c", "echo ready; exec sleep 60")
	holder := start(t, env, args...)
	if line := holder.line(30 * time.Second); line != "ready" {
		t.Fatalf("holder printed %q; want ready", line)
	}
	return holder
}

// On a held lock, -wait 0 exits 75 at once and -wait 300ms after about
// 300ms, without running the command; a redlock waiting with no -wait ends
// on SIGTERM with 143, also without running it.
func TestRunWaitOnHeldLock(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	holder := holdLock(t, env, "busy")
	command := []string{"--", "sh", "-c", "echo ran"}

	begin := time.Now()
	code, out, p := runRedlock(t, env, append([]string{"run", "-wait", "0", "busy"}, command...)...)
	elapsed := time.Since(begin)
	if code != exitNotAcquired || len(out) != 0 {
		t.Errorf("-wait 0 exited %d with output %q; want %d and none\nstderr:\n%s", code, out, exitNotAcquired, p.stderr())
	}
	if elapsed > 2*time.Second {
		t.Errorf("-wait 0 took %v; want one attempt, well under 2s", elapsed)
	}
	t.Logf("-wait 0 exited after %v", elapsed)

	begin = time.Now()
	code, out, p = runRedlock(t, env, append([]string{"run", "-wait", "300ms", "busy"}, command...)...)
	elapsed = time.Since(begin)
	if code != exitNotAcquired || len(out) != 0 {
		t.Errorf("-wait 300ms exited %d with output %q; want %d and none\nstderr:\n%s", code, out, exitNotAcquired, p.stderr())
	}
	if elapsed < 300*time.Millisecond || elapsed > 2300*time.Millisecond {
		t.Errorf("-wait 300ms exited after %v; want 300ms and at most 2s more", elapsed)
	}
	t.Logf("-wait 300ms exited after %v", elapsed)

	waiter := start(t, env, append([]string{"run", "busy"}, command...)...)
	if line := awaitWaiters(t, env, "busy", 1); !strings.HasSuffix(line, " waiters=1") {
		t.Fatalf("status = %q; want the waiter queued\nwaiter's stderr:\n%s", line, waiter.stderr())
	}
	waiter.cmd.Process.Signal(syscall.SIGTERM)
	if code := waiter.wait(10 * time.Second); code != 128+int(syscall.SIGTERM) {
		t.Errorf("the waiter exited %d after SIGTERM; want %d\nstderr:\n%s", code, 128+int(syscall.SIGTERM), waiter.stderr())
	}
	if out := waiter.output(10 * time.Second); len(out) != 0 {
		t.Errorf("the waiter's command printed %q; want it not to have run", out)
	}

	holder.cmd.Process.Signal(syscall.SIGTERM)
	if code := holder.wait(10 * time.Second); code != 128+int(syscall.SIGTERM) {
		t.Errorf("the holder exited %d; want %d (its command killed by the SIGTERM passed on)\nstderr:\n%s", code, 128+int(syscall.SIGTERM), holder.stderr())
	}
}

// keyExpiry returns when key would expire on m if nothing
// extended it again: the time before PTTL was sent plus the PTTL, which is
// never later than the true expiry.
func keyExpiry(m *master, key string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	sent := time.Now()
	pttl, err := m.client.PTTL(ctx, key).Result()
	if err == nil && pttl <= 0 {
		err = fmt.Errorf("PTTL = %v: no key with a TTL", pttl)
	}
	return sent.Add(pttl), err
}

// pauseMajority pauses all masters but the last, right after the watchdog
// extended the lock held by p, and returns the time the pause began and a
// time before which the lock is still valid: the key's new expiry on the
// first master, where the extension was seen. That extension was confirmed,
// by that master and the last one, which keeps answering; so the TTL since
// the last confirmed extension runs out no earlier than this expiry, less
// the extension's trip to the master.
func pauseMajority(t *testing.T, p *proc, masters []*master, name string) (paused, expiry time.Time) {
	t.Helper()
	return pauseMajorityAt(t, p, masters, "redlock:{"+name+"}")
}

// pauseMajorityAt is pauseMajority for the lease whose key is key, such as
// a semaphore's slot.
func pauseMajorityAt(t *testing.T, p *proc, masters []*master, key string) (paused, expiry time.Time) {
	t.Helper()
	majority := masters[:len(masters)/2+1]
	// The key may reach the first master after redlock has started the
	// command: the acquisition does not wait for the slowest master.
	var first time.Time
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		expiry, err = keyExpiry(majority[0], key)
		if err == nil && first.IsZero() {
			first = expiry
		}
		// An extension moves the expiry by a watchdog interval, a third
		// of the TTL; 50ms tells it from the PTTL's rounding.
		if err == nil && expiry.Sub(first) > 50*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no extension seen on %s within 5s (last: %v)\nredlock's stderr:\n%s", majority[0].addr, err, p.stderr())
		}
		time.Sleep(5 * time.Millisecond)
	}
	paused = time.Now()
	for _, m := range majority {
		m.pause(t)
		t.Cleanup(m.resume)
	}
	return paused, expiry
}

// With a majority of the masters paused, the lock cannot be extended: the
// command and its own child are killed before the TTL has passed since the
// last confirmed extension, and redlock exits 76.
func TestRunLossKillsCommand(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	const ttl = time.Second
	p := start(t, env, "run", "-ttl", ttl.String(), "loss", "--", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $$ $!; wait")
	ids := pids(t, p.line(30*time.Second))
	if len(ids) != 2 {
		t.Fatalf("command printed %v; want its pid and its child's", ids)
	}
	var watchers sync.WaitGroup
	died := watchDeath(ids[0], 10*time.Second, &watchers)

	paused, expiry := pauseMajority(t, p, masters, "loss")
	code := p.wait(10 * time.Second)
	deathAt := <-died
	watchers.Wait()
	resumeAll(masters)

	if code != exitLost {
		t.Errorf("redlock exited %d; want %d\nstderr:\n%s", code, exitLost, p.stderr())
	}
	if deathAt.IsZero() {
		t.Fatalf("the command (pid %d) was still there 10s after the pause", ids[0])
	}
	for _, pid := range ids {
		if !gone(pid) {
			t.Errorf("process %d of the command is still running after redlock exited", pid)
		}
	}
	if !deathAt.Before(expiry) {
		t.Errorf("the command was gone %v after the pause began, %v after the TTL since the last confirmed extension", deathAt.Sub(paused), deathAt.Sub(expiry))
	}
	// redlock itself exits once it has reaped the command, waiting for the
	// paused masters no longer than releaseWait. It is not held to the
	// TTL as the command is: a binary built with -race takes a few
	// milliseconds to exit, more on a busy machine, and the command is what
	// the lock protects.
	if after := p.exitAt.Sub(deathAt); after > releaseWait+200*time.Millisecond {
		t.Errorf("redlock exited %v after the command was gone; want at most %v", after, releaseWait)
	}
	if !strings.Contains(p.stderr(), "lock lost") {
		t.Errorf("stderr does not say the lock was lost:\n%s", p.stderr())
	}
	t.Logf("the pause began %v before the TTL since the last extension ran out; the command was gone %v after the pause began, %v before the TTL ran out; redlock exited %v after the pause began",
		expiry.Sub(paused).Round(time.Millisecond), deathAt.Sub(paused).Round(time.Millisecond), expiry.Sub(deathAt).Round(time.Millisecond), p.exitAt.Sub(paused).Round(time.Millisecond))
}

func TestRunLossGrace(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}

	t.Run("cleans up", func(t *testing.T) {
		script := `trap 'echo cleaned up; exit 0' TERM; echo ready; while :; do sleep 0.05; done`
		p := start(t, env, "run", "-ttl", "1s", "-grace", "5s", "grace-clean", "--", "sh", "-c", script)
		if line := p.line(30 * time.Second); line != "ready" {
			t.Fatalf("command printed %q; want ready", line)
		}
		paused, _ := pauseMajority(t, p, masters, "grace-clean")
		if line := p.line(5 * time.Second); line != "cleaned up" {
			t.Errorf("command printed %q; want cleaned up", line)
		}
		code := p.wait(10 * time.Second)
		resumeAll(masters)
		if code != exitLost {
			t.Errorf("redlock exited %d; want %d\nstderr:\n%s", code, exitLost, p.stderr())
		}
		// It exited by itself, long before the 5s grace period ended.
		if exited := p.exitAt.Sub(paused); exited > 3*time.Second {
			t.Errorf("redlock exited %v after the pause began; want the command's own exit, soon after the loss", exited)
		}
		if !strings.Contains(p.stderr(), "sent SIGTERM") {
			t.Errorf("stderr does not mention SIGTERM:\n%s", p.stderr())
		}
	})

	t.Run("killed after the grace period", func(t *testing.T) {
		const grace = 500 * time.Millisecond
		script := `trap 'echo got TERM' TERM; echo $$; while :; do sleep 0.05; done`
		p := start(t, env, "run", "-ttl", "1s", "-grace", grace.String(), "grace-stubborn", "--", "sh", "-c", script)
		ids := pids(t, p.line(30*time.Second))
		// Should the test fail, the command, which outlives SIGTERM, must
		// not outlive the test.
		t.Cleanup(func() { syscall.Kill(-ids[0], syscall.SIGKILL) })
		pauseMajority(t, p, masters, "grace-stubborn")
		if line := p.line(5 * time.Second); line != "got TERM" {
			t.Errorf("command printed %q; want got TERM", line)
		}
		termAt := time.Now()
		code := p.wait(10 * time.Second)
		resumeAll(masters)
		if code != exitLost {
			t.Errorf("redlock exited %d; want %d\nstderr:\n%s", code, exitLost, p.stderr())
		}
		if !gone(ids[0]) {
			t.Errorf("the command (pid %d) is still running after redlock exited", ids[0])
		}
		// SIGKILL follows SIGTERM by the grace period; the TERM line was
		// read some time after the SIGTERM.
		if after := p.exitAt.Sub(termAt); after < grace/2 || after > grace+2*time.Second {
			t.Errorf("redlock exited %v after the command reported SIGTERM; want about %v", after, grace)
		}
	})
}

func resumeAll(masters []*master) {
	for _, m := range masters {
		m.resume()
	}
}

// SIGINT, SIGTERM and SIGHUP sent to redlock reach the command; redlock
// exits with the command's status once it has exited, and the key is then
// gone from every master.
func TestRunForwardsSignals(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	script := `for sig in INT TERM HUP; do trap "echo got $sig; exit 5" $sig; done; echo ready; while :; do sleep 0.05; done`
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			name := "signal-" + strconv.Itoa(int(sig))
			p := start(t, env, "run", name, "--", "sh", "-c", script)
			if line := p.line(30 * time.Second); line != "ready" {
				t.Fatalf("command printed %q; want ready", line)
			}
			p.cmd.Process.Signal(sig)
			want := "got " + strings.TrimPrefix(signalName(sig), "SIG")
			if line := p.line(5 * time.Second); line != want {
				t.Errorf("command printed %q; want %q", line, want)
			}
			if code := p.wait(10 * time.Second); code != 5 {
				t.Errorf("redlock exited %d; want the command's 5\nstderr:\n%s", code, p.stderr())
			}
			if n := keyHolders(t, masters, name); n != 0 {
				t.Errorf("the key is on %d masters after redlock exited; want 0", n)
			}
		})
	}
}

func signalName(sig syscall.Signal) string {
	return map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM", syscall.SIGHUP: "SIGHUP"}[sig]
}

// What the command leaves running in its process group is killed when it
// exits, before the lock is released.
func TestRunKillsLeftovers(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	code, out, p := runRedlock(t, env, "run", "leftovers", "--", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!")
	if code != 0 || len(out) != 1 {
		t.Fatalf("redlock exited %d with output %q; want 0 and a pid\nstderr:\n%s", code, out, p.stderr())
	}
	pid := pids(t, out[0])[0]
	// SIGKILL was sent before redlock exited; the leftover dies as soon as
	// the kernel delivers it.
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the command's background job (pid %d) still runs after redlock exited", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// With -fencing, the command gets REDLOCK_TOKEN, which grows from one run to
// the next; without it, an inherited REDLOCK_TOKEN is removed. REDLOCK_NAME
// is always set. The masters come from REDLOCK_URLS here, from -url below.
func TestRunEnvironment(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters), "REDLOCK_TOKEN=stale"}
	print := []string{"--", "sh", "-c", `echo "$REDLOCK_NAME ${REDLOCK_TOKEN-unset}"`}
	var tokens []uint64
	for range 3 {
		code, out, p := runRedlock(t, env, append([]string{"run", "-fencing", "fenced"}, print...)...)
		if code != 0 || len(out) != 1 {
			t.Fatalf("redlock exited %d with output %q; want 0 and one line\nstderr:\n%s", code, out, p.stderr())
		}
		name, token, _ := strings.Cut(out[0], " ")
		n, err := strconv.ParseUint(token, 10, 64)
		if name != "fenced" || err != nil {
			t.Fatalf("command printed %q; want fenced and a token", out[0])
		}
		tokens = append(tokens, n)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("tokens %v; want each larger than the last", tokens)
		}
	}

	var args []string
	for _, m := range masters {
		args = append(args, "-url", m.url())
	}
	args = append(append([]string{"run"}, args...), "plain")
	code, out, p := runRedlock(t, []string{"REDLOCK_URLS=redis://127.0.0.1:1/0", "REDLOCK_TOKEN=stale"}, append(args, print...)...)
	if code != 0 || len(out) != 1 || out[0] != "plain unset" {
		t.Errorf("without -fencing, redlock exited %d and the command printed %q; want 0 and \"plain unset\"\nstderr:\n%s", code, out, p.stderr())
	}
}

// Masters that refuse the lock's commands are a failure, 70, not a lock that
// is taken: with or without -wait, redlock gives up at once. With -fencing
// the acquisition is a script; without it, a SET.
func TestRunRefused(t *testing.T) {
	masters := startMasters(t, 3)
	tests := []struct {
		name    string
		denied  string // the ACL category the user lacks
		fencing bool
	}{
		{"scripts", "-@scripting", true},
		{"writes", "-@write", false},
	}
	for _, tt := range tests {
		var urls []string
		user := "no-" + tt.name
		for _, m := range masters {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := m.client.Do(ctx, "ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all", tt.denied).Err()
			cancel()
			if err != nil {
				t.Fatalf("ACL SETUSER: %v", err)
			}
			urls = append(urls, "redis://"+user+":secret@"+m.addr+"/0")
		}
		env := []string{"REDLOCK_URLS=" + strings.Join(urls, ",")}
		for _, wait := range [][]string{nil, {"-wait", "0"}, {"-wait", "10s"}} {
			args := []string{"run"}
			if tt.fencing {
				args = append(args, "-fencing")
			}
			args = append(append(args, wait...), "refused", "--", "sh", "-c", "echo ran")
			begin := time.Now()
			code, out, p := runRedlock(t, env, args...)
			if code != exitFailure || len(out) != 0 {
				t.Errorf("as %s, redlock %q exited %d with output %q; want %d and none\nstderr:\n%s", user, args, code, out, exitFailure, p.stderr())
			}
			if elapsed := time.Since(begin); elapsed > 5*time.Second {
				t.Errorf("as %s, redlock %q took %v; want it to give up at once", user, args, elapsed)
			}
			// Redis 7 says NOPERM for a denied command, and "can't run
			// this command" for one a script runs.
			if !strings.Contains(p.stderr(), "NOPERM") && !strings.Contains(p.stderr(), "can't run this command") {
				t.Errorf("as %s, stderr does not name the refusal:\n%s", user, p.stderr())
			}
		}
	}
}

// A URL that does not parse is a failure, 70.
func TestRunBadURL(t *testing.T) {
	var stdout, stderr strings.Builder
	code := run([]string{"run", "-url", "http://127.0.0.1:1/", "job", "--", "true"}, nil, strings.NewReader(""), &stdout, &stderr)
	if code != exitFailure || !strings.Contains(stderr.String(), "URL") {
		t.Errorf("redlock exited %d with stderr %q; want %d and the URL named", code, stderr.String(), exitFailure)
	}
}

// A master that answers a transient error, here OOM, does not make a taken
// lock a failure: with the lock held on the other two masters, -wait 0 and
// -wait 1s both exit 75 without running the command, as a cron job that
// skips its turn expects. Without -fencing, the round may end on the two
// refusals before the OOM arrives; with it, the OOM is part of the answer.
func TestRunTransientErrorNotAcquired(t *testing.T) {
	masters := startMasters(t, 3)
	holder := holdLock(t, []string{urlsEnv(masters[:2])}, "transient")
	oom := masters[2]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := oom.client.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := oom.client.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		oom.client.ConfigSet(ctx, "maxmemory", "0")
	})
	if err := oom.client.Set(ctx, "probe", "x", 0).Err(); err == nil || !strings.HasPrefix(err.Error(), "OOM") {
		t.Fatalf("SET on the third master: %v; want OOM", err)
	}

	env := []string{urlsEnv(masters)}
	for _, wait := range []string{"0", "1s"} {
		for _, fencing := range [][]string{nil, {"-fencing"}} {
			args := append(append([]string{"run", "-wait", wait}, fencing...), "transient", "--", "sh", "-c", "echo ran")
			code, out, p := runRedlock(t, env, args...)
			if code != exitNotAcquired || len(out) != 0 {
				t.Errorf("redlock %q exited %d with output %q; want %d and none\nstderr:\n%s", args, code, out, exitNotAcquired, p.stderr())
			}
		}
	}
	holder.cmd.Process.Signal(syscall.SIGTERM)
	holder.wait(10 * time.Second)
}

// A lock lost while its masters still answer, here because another owner's
// value replaced the key on two of three, is released before redlock exits:
// its key is gone from the third master once redlock has exited 76. The
// third master is a little slow, paused from before the loss until 50ms
// after the command was killed, well within the node timeout (300ms with a
// TTL of 3s): the library sends the release once the extension in flight to
// it is answered, which is after the command is gone.
func TestRunLossReleases(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	const name = "taken-over"
	p := start(t, env, "run", "-ttl", "3s", name, "--", "sh", "-c", "echo $$; exec sleep 60")
	pid := pids(t, p.line(30*time.Second))[0]
	// The key may reach the third master after the command started.
	slow := masters[2]
	deadline := time.Now().Add(5 * time.Second)
	for keyHolders(t, []*master{slow}, name) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the key never reached %s", slow.addr)
		}
		time.Sleep(5 * time.Millisecond)
	}
	var watchers sync.WaitGroup
	died := watchDeath(pid, 10*time.Second, &watchers)
	slow.pause(t)
	t.Cleanup(slow.resume)
	for _, m := range masters[:2] {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := m.client.Set(ctx, "redlock:{"+name+"}", "another owner", time.Minute).Err()
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	deathAt := <-died
	watchers.Wait()
	if deathAt.IsZero() {
		t.Fatalf("the command (pid %d) still ran 10s after the key was taken over\nstderr:\n%s", pid, p.stderr())
	}
	time.Sleep(50 * time.Millisecond)
	slow.resume()
	if code := p.wait(10 * time.Second); code != exitLost {
		t.Fatalf("redlock exited %d; want %d\nstderr:\n%s", code, exitLost, p.stderr())
	}
	if n := keyHolders(t, []*master{slow}, name); n != 0 {
		t.Errorf("the key is still on %s after redlock exited; want it released\nstderr:\n%s", slow.addr, p.stderr())
	}
	t.Logf("redlock exited %v after the command was gone", p.exitAt.Sub(deathAt).Round(time.Millisecond))
}

// If redlock itself is killed with SIGKILL, which it cannot catch, COMMAND
// dies with it, rather than run on past the lock's TTL. Only Linux has the
// parent-death signal that this relies on.
func TestRunKilledTakesCommand(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("no parent-death signal on " + runtime.GOOS)
	}
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	p := start(t, env, "run", "killed", "--", "sh", "-c", "echo $$; exec sleep 60")
	pid := pids(t, p.line(30*time.Second))[0]
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	killedAt := time.Now()
	p.cmd.Process.Kill()
	p.wait(10 * time.Second)
	deadline := killedAt.Add(5 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("COMMAND (pid %d) still runs 5s after redlock was killed", pid)
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("COMMAND was gone %v after SIGKILL was sent to redlock", time.Since(killedAt).Round(time.Millisecond))
}

// deadURLs returns n URLs of ports on 127.0.0.1 where nothing listens.
func deadURLs(t *testing.T, n int) []string {
	t.Helper()
	var urls []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		urls = append(urls, "redis://"+ln.Addr().String()+"/0")
		ln.Close()
	}
	return urls
}

// -wait 0 against masters that refuse connections exits 75 at once, as
// flock -n does: a refused dial sent nothing, so there is nothing to
// release, and redlock does not wait for the library to retry the release.
func TestRunWaitZeroRefused(t *testing.T) {
	env := []string{"REDLOCK_URLS=" + strings.Join(deadURLs(t, 3), ",")}
	begin := time.Now()
	code, out, p := runRedlock(t, env, "run", "-wait", "0", "refused-dial", "--", "sh", "-c", "echo ran")
	elapsed := p.exitAt.Sub(begin)
	if code != exitNotAcquired || len(out) != 0 {
		t.Errorf("redlock exited %d with output %q; want %d and none\nstderr:\n%s", code, out, exitNotAcquired, p.stderr())
	}
	t.Logf("-wait 0 against 3 refusing masters exited after %v", elapsed.Round(time.Millisecond))
	if elapsed > time.Second {
		t.Errorf("-wait 0 against refusing masters took %v; want well under 1s", elapsed)
	}
}

// With one master of three down, go-redis fails to dial it many times a
// second; redlock says so once, not once per dial.
func TestRunDownMasterLogsOnce(t *testing.T) {
	live := startMasters(t, 2)
	urls := append([]string{live[0].url(), live[1].url()}, deadURLs(t, 1)...)
	env := []string{"REDLOCK_URLS=" + strings.Join(urls, ",")}
	code, _, p := runRedlock(t, env, "run", "-ttl", "900ms", "one-down", "--", "sleep", "1")
	if code != 0 {
		t.Fatalf("redlock exited %d; want 0\nstderr:\n%s", code, p.stderr())
	}
	dials := 0
	for line := range strings.Lines(p.stderr()) {
		if strings.Contains(line, "dial") {
			dials++
		}
	}
	t.Logf("%d lines on a failed dial in a run of 1s:\n%s", dials, p.stderr())
	if dials > 2 {
		t.Errorf("%d lines on a failed dial in a run of 1s; want at most 2", dials)
	}
}
