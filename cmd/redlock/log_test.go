//go:build unix

package main

import (
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dialError is the error go-redis logs when a dial to addr is refused.
func dialError(addr string) error {
	tcp, _ := net.ResolveTCPAddr("tcp", addr)
	return &net.OpError{Op: "dial", Net: "tcp", Addr: tcp, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
}

// A failed dial is written once per master while it stays down, and again
// after it has gone upAfter without one: down, up, down writes two lines.
// Other lines of go-redis are written once each.
func TestDiagnosticsDialFailures(t *testing.T) {
	var out strings.Builder
	d := newDiagnostics(&out, time.Second)
	now := time.Unix(1000, 0)
	d.now = func() time.Time { return now }
	const format = "redis: connection pool: failed to dial after %d attempts: %v"
	fail := func(addr string, times int) {
		for range times {
			d.Printf(t.Context(), format, 1, dialError(addr))
			now = now.Add(50 * time.Millisecond) // 20 a second
		}
	}
	fail("127.0.0.1:7001", 40) // down for 2s
	fail("127.0.0.1:7002", 3)  // another master down
	now = now.Add(5 * time.Second)
	fail("127.0.0.1:7001", 10) // up for 5s, then down again
	d.Printf(t.Context(), "redis: connection pool: failed to get a usable connection after %d attempts", 3)
	d.Printf(t.Context(), "redis: connection pool: failed to get a usable connection after %d attempts", 3)

	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	want := []string{
		"redlock: cannot connect to master 127.0.0.1:7001: dial tcp 127.0.0.1:7001: connect: connection refused",
		"redlock: cannot connect to master 127.0.0.1:7002: dial tcp 127.0.0.1:7002: connect: connection refused",
		"redlock: cannot connect to master 127.0.0.1:7001: dial tcp 127.0.0.1:7001: connect: connection refused",
		"redlock: go-redis: connection pool: failed to get a usable connection after 3 attempts",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("diagnostics wrote\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
