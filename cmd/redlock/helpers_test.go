//go:build unix

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// binary is the redlock command, built by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "redlock-cmd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "redlock")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// master is a redis-server process that a test started.
type master struct {
	cmd    *exec.Cmd
	addr   string
	client *redis.Client
	logged chan struct{} // closed when its log pipe is drained
}

// startMasters starts n redis-server processes on free ports of 127.0.0.1
// and stops them when the test ends. Without redis-server the test skips,
// or fails under CI.
func startMasters(t *testing.T, n int) []*master {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server is required under CI: %v", err)
		}
		t.Skipf("redis-server not found: %v", err)
	}
	masters := make([]*master, n)
	for i := range masters {
		masters[i] = startMaster(t)
	}
	return masters
}

// startMaster starts one redis-server, trying another port if the one it
// picked was taken in the meantime.
func startMaster(t *testing.T) *master {
	t.Helper()
	var lastErr error
	for range 5 {
		m, err := tryMaster(t.TempDir())
		if err == nil {
			t.Cleanup(m.stop)
			return m
		}
		lastErr = err
	}
	t.Fatalf("starting redis-server: %v", lastErr)
	return nil
}

func tryMaster(dir string) (*master, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir)
	logs, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m := &master{cmd: cmd, addr: fmt.Sprintf("127.0.0.1:%d", port), logged: make(chan struct{})}
	ready := make(chan struct{})
	var log strings.Builder
	go func() {
		defer close(m.logged)
		scanner := bufio.NewScanner(logs)
		starting := true
		for scanner.Scan() {
			if starting {
				log.WriteString(scanner.Text() + "\n")
				if strings.Contains(scanner.Text(), "Ready to accept connections") {
					close(ready)
					starting = false
				}
			}
		}
	}()
	select {
	case <-ready:
	case <-m.logged:
		cmd.Wait()
		return nil, fmt.Errorf("redis-server on port %d exited:\n%s", port, log.String())
	case <-time.After(10 * time.Second):
		m.stop()
		return nil, fmt.Errorf("redis-server on port %d not ready in 10s", port)
	}
	m.client = redis.NewClient(&redis.Options{Addr: m.addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	return m, nil
}

// stop kills the server, even a paused one, and reaps it.
func (m *master) stop() {
	if m.client != nil {
		m.client.Close()
	}
	m.cmd.Process.Signal(syscall.SIGCONT)
	m.cmd.Process.Kill()
	<-m.logged
	m.cmd.Wait()
}

func (m *master) url() string { return "redis://" + m.addr + "/0" }

// pause stops the server with SIGSTOP; resume continues it.
func (m *master) pause(t *testing.T) {
	t.Helper()
	if err := m.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP redis-server: %v", err)
	}
}

func (m *master) resume() { m.cmd.Process.Signal(syscall.SIGCONT) }

// urlsEnv returns the REDLOCK_URLS variable naming masters.
func urlsEnv(masters []*master) string {
	urls := make([]string, len(masters))
	for i, m := range masters {
		urls[i] = m.url()
	}
	return "REDLOCK_URLS=" + strings.Join(urls, ",")
}

// keyHolders counts the masters that have the lock's key.
func keyHolders(t *testing.T, masters []*master, name string) int {
	t.Helper()
	count := 0
	for _, m := range masters {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		n, err := m.client.Exists(ctx, "redlock:{"+name+"}").Result()
		cancel()
		if err != nil {
			t.Fatalf("EXISTS on %s: %v", m.addr, err)
		}
		count += int(n)
	}
	return count
}

// proc is a redlock process a test started. Its stdout comes line by line on
// lines; its stderr goes to a file.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	lines   chan string
	read    chan struct{} // closed when stdout is drained
	exited  chan struct{} // closed when the process has been reaped
	exitAt  time.Time
	code    int
	errFile string
}

// start runs the redlock binary with args, and env added to the test's
// environment.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	if os.Getenv("GORACE") == "" {
		// A binary built with -race sleeps a second before it exits.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	// Its stdout and stderr are files, so that Wait does not wait for
	// processes that inherited them.
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errFile, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redlock: %v", err)
	}
	outW.Close()
	errFile.Close()
	p := &proc{t: t, cmd: cmd, lines: make(chan string, 1000), read: make(chan struct{}), exited: make(chan struct{}), errFile: errFile.Name()}
	go func() {
		defer close(p.read)
		defer close(p.lines)
		scanner := bufio.NewScanner(outR)
		for scanner.Scan() {
			p.lines <- scanner.Text()
		}
		outR.Close()
	}()
	go func() {
		defer close(p.exited)
		cmd.Wait()
		p.exitAt = time.Now()
		p.code = cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.code = 128 + int(ws.Signal())
		}
	}()
	t.Cleanup(func() {
		// A test that failed may leave redlock running: SIGTERM reaches
		// its command too, where SIGKILL would leave the command behind.
		select {
		case <-p.exited:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-p.exited
			}
		}
		select {
		case <-p.read:
		case <-time.After(10 * time.Second):
			t.Errorf("stdout of redlock %v still open 10s after it exited", args)
		}
	})
	return p
}

// line returns the next line of stdout, failing the test if none comes
// within the timeout.
func (p *proc) line(timeout time.Duration) string {
	p.t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("redlock's stdout ended; want a line\nstderr:\n%s", p.stderr())
		}
		return line
	case <-time.After(timeout):
		p.t.Fatalf("no line from redlock within %v\nstderr:\n%s", timeout, p.stderr())
		return ""
	}
}

// wait waits for the process to exit and returns its status: the exit code,
// or 128+N if signal N killed it. It fails the test after the timeout.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.exited
		p.t.Fatalf("redlock did not exit within %v\nstderr:\n%s", timeout, p.stderr())
		return 0
	}
}

// output waits for stdout to end and returns the lines not read yet.
func (p *proc) output(timeout time.Duration) []string {
	p.t.Helper()
	var lines []string
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return lines
			}
			lines = append(lines, line)
		case <-deadline:
			p.t.Fatalf("redlock's stdout still open after %v; read %q", timeout, lines)
		}
	}
}

func (p *proc) stderr() string {
	b, err := os.ReadFile(p.errFile)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// runRedlock runs redlock to its end and returns its status and stdout.
func runRedlock(t *testing.T, env []string, args ...string) (int, []string, *proc) {
	t.Helper()
	p := start(t, env, args...)
	code := p.wait(30 * time.Second)
	return code, p.output(10 * time.Second), p
}

// gone reports whether no process has pid, or only a zombie that nobody has
// reaped yet (an orphan whose new parent does not reap, as in some
// containers): either way, it runs no more.
func gone(pid int) bool {
	err := syscall.Kill(pid, 0)
	if errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// The state follows the command name, which is in parentheses.
	_, after, ok := strings.Cut(string(stat), ") ")
	return ok && strings.HasPrefix(after, "Z")
}

// watchDeath polls pid every millisecond and returns a channel that receives
// the time the pid was first seen gone (ESRCH), or the zero time if it was
// still there after the timeout.
func watchDeath(pid int, timeout time.Duration, wg *sync.WaitGroup) <-chan time.Time {
	died := make(chan time.Time, 1)
	wg.Go(func() {
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
				died <- time.Now()
				return
			}
			time.Sleep(time.Millisecond)
		}
		died <- time.Time{}
	})
	return died
}

// pids parses a line of process ids.
func pids(t *testing.T, line string) []int {
	t.Helper()
	var out []int
	for field := range strings.FieldsSeq(line) {
		pid, err := strconv.Atoi(field)
		if err != nil {
			t.Fatalf("line %q: want process ids", line)
		}
		out = append(out, pid)
	}
	return out
}
