//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// slotKey is the key of slot i of the semaphore name.
func slotKey(name string, i int) string {
	return fmt.Sprintf("redlock:{%s}:semaphore:slot:%d", name, i)
}

// slotsHeld counts, over every master, the slots of the semaphore name of
// permits permits that are set.
func slotsHeld(t *testing.T, masters []*master, name string, permits int) int {
	t.Helper()
	count := 0
	for i := range permits {
		for _, m := range masters {
			n, err := m.client.Exists(t.Context(), slotKey(name, i)).Result()
			if err != nil {
				t.Fatalf("EXISTS on %s: %v", m.addr, err)
			}
			count += int(n)
		}
	}
	return count
}

// mostAtOnce is the largest number of intervals that overlap at one moment.
func mostAtOnce(intervals []interval) int {
	most := 0
	for _, iv := range intervals {
		at := 0
		for _, other := range intervals {
			if !other.start.After(iv.start) && other.end.After(iv.start) {
				at++
			}
		}
		most = max(most, at)
	}
	return most
}

// Three redlock run -n 2 on one name, started together, run at most two of
// their commands at once, and do run two at once; every slot is free once
// they have exited.
func TestRunSemaphoreBound(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	log := filepath.Join(t.TempDir(), "log")
	// Each command stays until a second one has started, or 2s: a third,
	// had it been let in, would be inside by then.
	script := `echo "start $(date +%s%N) $$" >> "$1"
i=0; while [ "$(grep -c start "$1")" -lt 2 ] && [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done
sleep 0.3; echo "end $(date +%s%N) $$" >> "$1"`
	const rounds, together = 2, 3
	for range rounds {
		var procs []*proc
		for range together {
			procs = append(procs, start(t, env, "run", "-n", "2", "pool", "--", "sh", "-c", script, "sh", log))
		}
		for _, p := range procs {
			if code := p.wait(30 * time.Second); code != 0 {
				t.Fatalf("redlock run -n 2 exited %d; want 0\nstderr:\n%s", code, p.stderr())
			}
		}
	}
	intervals := readIntervals(t, log)
	if len(intervals) != rounds*together {
		t.Fatalf("%d commands ran; want %d", len(intervals), rounds*together)
	}
	if most := mostAtOnce(intervals); most != 2 {
		t.Errorf("%d commands ran at once under -n 2; want 2", most)
	}
	if n := slotsHeld(t, masters, "pool", 2); n != 0 {
		t.Errorf("%d slots are set on the masters after every redlock exited; want 0", n)
	}
}

// With every permit held, -wait 0 exits 75 at once without running the
// command; another -n for the name exits 70, naming both numbers; the
// command's status passes through; status -n reports the permits held and
// the waiters, as a line or as JSON.
func TestRunSemaphoreStatuses(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}
	if got := status(t, env, "-n", "2", "encoders"); got != "held=0/2 waiters=0" {
		t.Errorf("status -n 2 of an unused semaphore = %q; want held=0/2 waiters=0", got)
	}
	code, _, p := runRedlock(t, env, "run", "-n", "2", "encoders", "--", "sh", "-c", "exit 3")
	if code != 3 {
		t.Errorf("run -n 2 -- exit 3 exited %d; want 3\nstderr:\n%s", code, p.stderr())
	}
	holders := []*proc{holdLock(t, env, "encoders", "-n", "2"), holdLock(t, env, "encoders", "-n", "2")}
	if got := status(t, env, "-n", "2", "encoders"); got != "held=2/2 waiters=0" {
		t.Errorf("status -n 2 with both permits held = %q; want held=2/2 waiters=0", got)
	}

	begin := time.Now()
	code, out, p := runRedlock(t, env, "run", "-n", "2", "-wait", "0", "encoders", "--", "echo", "ran")
	if code != exitNotAcquired || len(out) != 0 {
		t.Errorf("-wait 0 with every permit held exited %d with output %q; want %d and none\nstderr:\n%s", code, out, exitNotAcquired, p.stderr())
	}
	if elapsed := time.Since(begin); elapsed > 2*time.Second {
		t.Errorf("-wait 0 took %v; want one attempt", elapsed)
	}

	code, out, p = runRedlock(t, env, "run", "-n", "3", "-wait", "0", "encoders", "--", "echo", "ran")
	if code != exitFailure || len(out) != 0 {
		t.Errorf("run -n 3 on a semaphore of 2 exited %d with output %q; want %d and none\nstderr:\n%s", code, out, exitFailure, p.stderr())
	}
	if msg := p.stderr(); !strings.Contains(msg, "has 3 permits") || !strings.Contains(msg, "a limit of 2") {
		t.Errorf("run -n 3 on a semaphore of 2: stderr does not name both numbers:\n%s", msg)
	}
	code, _, p = runRedlock(t, env, "status", "-n", "3", "encoders")
	if code != exitFailure {
		t.Errorf("status -n 3 on a semaphore of 2 exited %d; want %d\nstderr:\n%s", code, exitFailure, p.stderr())
	}

	waiter := start(t, env, "run", "-n", "2", "encoders", "--", "true")
	deadline := time.Now().Add(10 * time.Second)
	line := status(t, env, "-n", "2", "encoders")
	for line != "held=2/2 waiters=1" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		line = status(t, env, "-n", "2", "encoders")
	}
	if line != "held=2/2 waiters=1" {
		t.Errorf("status -n 2 with both permits held and a waiter = %q; want held=2/2 waiters=1", line)
	}
	jsonLine := status(t, env, "-json", "-n", "2", "encoders")
	var got map[string]any
	if err := json.Unmarshal([]byte(jsonLine), &got); err != nil {
		t.Fatalf("status -json -n 2 printed %q: %v", jsonLine, err)
	}
	want := map[string]any{"name": "encoders", "permits": 2.0, "held": 2.0, "waiters": 1.0}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("status -json -n 2 = %v; want %v", got, want)
	}

	// The first holder's release wakes the waiter, whose command runs.
	holders[0].cmd.Process.Signal(syscall.SIGTERM)
	holders[0].wait(10 * time.Second)
	if code := waiter.wait(10 * time.Second); code != 0 {
		t.Errorf("the waiter exited %d; want 0 once a holder released its permit\nstderr:\n%s", code, waiter.stderr())
	}
	holders[1].cmd.Process.Signal(syscall.SIGTERM)
	holders[1].wait(10 * time.Second)
	if got := status(t, env, "-n", "2", "encoders"); got != "held=0/2 waiters=0" {
		t.Errorf("status -n 2 once everyone exited = %q; want held=0/2 waiters=0", got)
	}
}

// A permit lost to a majority of paused masters kills the command's group
// before the TTL since its last confirmed extension has passed, and redlock
// exits 76; a signal sent to redlock -n reaches the command, whose status
// passes through, and the permit is released.
func TestRunSemaphoreLossAndSignals(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}

	t.Run("signal", func(t *testing.T) {
		script := `trap 'echo got TERM; exit 5' TERM; echo ready; while :; do sleep 0.05; done`
		p := start(t, env, "run", "-n", "2", "sem-signal", "--", "sh", "-c", script)
		if line := p.line(30 * time.Second); line != "ready" {
			t.Fatalf("command printed %q; want ready", line)
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		if line := p.line(5 * time.Second); line != "got TERM" {
			t.Errorf("command printed %q; want got TERM", line)
		}
		if code := p.wait(10 * time.Second); code != 5 {
			t.Errorf("redlock -n 2 exited %d; want the command's 5\nstderr:\n%s", code, p.stderr())
		}
		if n := slotsHeld(t, masters, "sem-signal", 2); n != 0 {
			t.Errorf("%d slots are set after redlock exited; want 0", n)
		}
	})

	t.Run("signal during the wait", func(t *testing.T) {
		holder := holdLock(t, env, "sem-wait", "-n", "1")
		waiter := start(t, env, "run", "-n", "1", "sem-wait", "--", "echo", "ran")
		deadline := time.Now().Add(10 * time.Second)
		for status(t, env, "-n", "1", "sem-wait") != "held=1/1 waiters=1" && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		waiter.cmd.Process.Signal(syscall.SIGTERM)
		if code := waiter.wait(10 * time.Second); code != 128+int(syscall.SIGTERM) {
			t.Errorf("the waiter exited %d after SIGTERM; want %d\nstderr:\n%s", code, 128+int(syscall.SIGTERM), waiter.stderr())
		}
		if out := waiter.output(10 * time.Second); len(out) != 0 {
			t.Errorf("the waiter's command printed %q; want it not to have run", out)
		}
		if got := status(t, env, "-n", "1", "sem-wait"); got != "held=1/1 waiters=0" {
			t.Errorf("status once the waiter left = %q; want held=1/1 waiters=0", got)
		}
		holder.cmd.Process.Signal(syscall.SIGTERM)
		holder.wait(10 * time.Second)
	})

	t.Run("loss", func(t *testing.T) {
		p := start(t, env, "run", "-n", "1", "-ttl", "1s", "sem-loss", "--", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $$ $!; wait")
		ids := pids(t, p.line(30*time.Second))
		if len(ids) != 2 {
			t.Fatalf("command printed %v; want its pid and its child's", ids)
		}
		var watchers sync.WaitGroup
		died := watchDeath(ids[0], 10*time.Second, &watchers)
		_, expiry := pauseMajorityAt(t, p, masters, slotKey("sem-loss", 0))
		code := p.wait(10 * time.Second)
		deathAt := <-died
		watchers.Wait()
		resumeAll(masters)
		if code != exitLost {
			t.Errorf("redlock -n 1 exited %d after the loss; want %d\nstderr:\n%s", code, exitLost, p.stderr())
		}
		if deathAt.IsZero() || !deathAt.Before(expiry) {
			t.Errorf("the command was gone at %v; want before the permit's expiry at %v", deathAt, expiry)
		}
		for _, pid := range ids {
			if !gone(pid) {
				t.Errorf("process %d of the command is still running after redlock exited", pid)
			}
		}
		if msg := p.stderr(); !strings.Contains(msg, "lock lost") || !strings.Contains(msg, `semaphore "sem-loss"`) {
			t.Errorf("stderr does not say the semaphore's permit was lost:\n%s", msg)
		}
	})
}
