//go:build unix

package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/seed62cefe0a/redlock"
)

// reply is an error reply from Redis, as go-redis marks one.
type reply string

func (r reply) Error() string { return string(r) }
func (reply) RedisError()     {}

// One attempt's errors are joined, one per master; any error that retrying
// cannot fix makes it a failure, whatever comes before it; transient replies
// and refusals leave it a lock not acquired.
func TestNotAcquiredStatus(t *testing.T) {
	node := func(i int, err error) error { return &redlock.NodeError{Node: i, Addr: fmt.Sprint(i), Err: err} }
	oom := reply("OOM command not allowed when used memory > 'maxmemory'.")
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"taken", redlock.ErrTaken, exitNotAcquired},
		{"taken and OOM", errors.Join(redlock.ErrTaken, fmt.Errorf("%w: %w", redlock.ErrNoQuorum, node(2, oom))), exitNotAcquired},
		{"LOADING and BUSY", fmt.Errorf("%w: %w", redlock.ErrNoQuorum, errors.Join(node(0, reply("LOADING Redis is loading the dataset in memory")), node(1, reply("BUSY Redis is busy running a script")))), exitNotAcquired},
		{"OOM then NOPERM", fmt.Errorf("%w: %w", redlock.ErrNoQuorum, errors.Join(node(0, oom), node(1, reply("NOPERM User u has no permissions")))), exitFailure},
		{"not about acquisition", errors.New("redlock: something else"), exitFailure},
	}
	for _, tt := range tests {
		var stderr strings.Builder
		if got := notAcquired(&stderr, "job", tt.err); got != tt.want {
			t.Errorf("%s: notAcquired(%v) = %d; want %d", tt.name, tt.err, got, tt.want)
		}
		if strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("%s: stderr = %q; want one line", tt.name, stderr.String())
		}
	}
}
