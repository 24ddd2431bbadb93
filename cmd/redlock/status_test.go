//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// status runs redlock status with args and returns its one line of output.
func status(t *testing.T, env []string, args ...string) string {
	t.Helper()
	code, out, p := runRedlock(t, env, append([]string{"status"}, args...)...)
	if code != 0 || len(out) != 1 {
		t.Fatalf("redlock status %q exited %d with output %q; want 0 and one line\nstderr:\n%s", args, code, out, p.stderr())
	}
	return out[0]
}

// statusObject runs redlock status -json and decodes what it prints, which
// must be a JSON object with exactly the documented fields.
func statusObject(t *testing.T, env []string, name string) statusJSON {
	t.Helper()
	line := status(t, env, "-json", name)
	var fields map[string]any
	if err := json.Unmarshal([]byte(line), &fields); err != nil {
		t.Fatalf("status -json printed %q: %v", line, err)
	}
	for key := range fields {
		if key != "name" && key != "held" && key != "ttl_ms" && key != "waiters" {
			t.Errorf("status -json printed the field %q, which is not documented", key)
		}
	}
	var got statusJSON
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("status -json printed %q: %v", line, err)
	}
	return got
}

// awaitWaiters runs redlock status until it reports n waiters for name, for
// up to 10s, and returns the last line it printed. A waiter queues once its
// first attempt has failed.
func awaitWaiters(t *testing.T, env []string, name string, n int) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		line := status(t, env, name)
		if strings.HasSuffix(line, fmt.Sprintf(" waiters=%d", n)) || time.Now().After(deadline) {
			return line
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// status prints "free" for a free lock, and "held ttl=… waiters=…" for a held
// one, with the waiters queued behind the holder; -json prints the same as
// a JSON object.
func TestStatus(t *testing.T) {
	masters := startMasters(t, 3)
	env := []string{urlsEnv(masters)}

	if got := status(t, env, "report"); got != "free" {
		t.Errorf("status of a free lock = %q; want free", got)
	}
	if got, want := statusObject(t, env, "report"), (statusJSON{Name: "report"}); got != want {
		t.Errorf("status -json of a free lock = %+v; want %+v", got, want)
	}

	holder := holdLock(t, env, "report")
	waiter := start(t, env, "run", "report", "--", "true")
	line := awaitWaiters(t, env, "report", 1)
	var ttlText string
	var waiters int
	_, err := fmt.Sscanf(line, "held ttl=%s waiters=%d", &ttlText, &waiters)
	ttl, ttlErr := time.ParseDuration(ttlText)
	if err != nil || ttlErr != nil || waiters != 1 {
		t.Fatalf("status of a held lock with one waiter = %q; want held ttl=… waiters=1", line)
	}
	if ttl <= 0 || ttl > defaultTTL {
		t.Errorf("status says ttl=%v; want in (0, %v]", ttl, defaultTTL)
	}
	got := statusObject(t, env, "report")
	if !got.Held || got.Waiters != 1 || got.TTLMs <= 0 || got.TTLMs > defaultTTL.Milliseconds() || got.Name != "report" {
		t.Errorf("status -json of a held lock with one waiter = %+v; want held, 1 waiter, a TTL in (0, 8000]ms", got)
	}

	holder.cmd.Process.Signal(syscall.SIGTERM)
	holder.wait(10 * time.Second)
	if code := waiter.wait(10 * time.Second); code != 0 {
		t.Errorf("the waiter exited %d; want 0 once the holder released the lock\nstderr:\n%s", code, waiter.stderr())
	}
	if got := status(t, env, "report"); got != "free" {
		t.Errorf("status once both exited = %q; want free", got)
	}
}

// status fails with 70 when fewer than a quorum of the masters answer.
func TestStatusNoQuorum(t *testing.T) {
	masters := startMasters(t, 1)
	urls := []string{masters[0].url()}
	for range 2 {
		// A port that was free a moment ago: connections are refused.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		urls = append(urls, "redis://"+ln.Addr().String()+"/0")
		ln.Close()
	}
	code, out, p := runRedlock(t, []string{"REDLOCK_URLS=" + strings.Join(urls, ",")}, "status", "report")
	if code != exitFailure || len(out) != 0 {
		t.Errorf("status with 1 of 3 masters up exited %d with output %q; want %d and none\nstderr:\n%s", code, out, exitFailure, p.stderr())
	}
	if !strings.Contains(p.stderr(), "fewer than a quorum") {
		t.Errorf("stderr does not say why:\n%s", p.stderr())
	}
}
