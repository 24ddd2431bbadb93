package redlock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestNodeError(t *testing.T) {
	cause := errors.New("boom")
	joined := errors.Join(&NodeError{Node: 0, Addr: "a:1", Err: cause}, &NodeError{Node: 2, Err: context.DeadlineExceeded})
	err := errors.Join(ErrNotAcquired, joined)
	if !errors.Is(err, cause) || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrNotAcquired) {
		t.Errorf("errors.Is lost a wrapped error in %v", err)
	}
	var nodeErr *NodeError
	if !errors.As(err, &nodeErr) || nodeErr.Node != 0 {
		t.Errorf("errors.As(*NodeError) = %v; want node 0", nodeErr)
	}
	if got, want := nodeErr.Error(), "redlock: node 0 (a:1): boom"; got != want {
		t.Errorf("NodeError.Error() = %q; want %q", got, want)
	}
	if got, want := (&NodeError{Node: 2, Err: cause}).Error(), "redlock: node 2: boom"; got != want {
		t.Errorf("NodeError.Error() = %q; want %q", got, want)
	}
}

func TestPermanent(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{redis.ErrClosed, true},
		{ErrClosed, true},
		{context.DeadlineExceeded, false},
		{errors.New("dial tcp: connection refused"), false},
		{errTooBusy, false},
		{noPerm("NOPERM this user has no permissions to run the 'set' command"), true},
		{noPerm("ERR The user executing the script can't run this command or subcommand script: abc, on @user_script:21."), true},
		{noPerm("LOADING Redis is loading the dataset in memory"), false},
	}
	for _, tt := range tests {
		if got := permanent(tt.err); got != tt.want {
			t.Errorf("permanent(%v) = %v; want %v", tt.err, got, tt.want)
		}
	}
}

// TestNotAcquiredSaysWhy checks that a failed attempt names each cause that
// applies: refusals (ErrTaken), failed nodes (ErrNoQuorum), or both.
func TestNotAcquiredSaysWhy(t *testing.T) {
	tests := []struct {
		name                    string
		taken, down             int // nodes of 3 where another owner holds the key, nodes stopped
		wantTaken, wantNoQuorum bool
	}{
		{"two refusals", 2, 0, true, false},
		{"three refusals", 3, 0, true, false},
		{"two nodes down", 0, 2, false, true},
		{"one refusal and one node down", 1, 1, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mrs, clients := servers(t, 3)
			c := newClient(t, clients, WithTTL(time.Second))
			m := c.NewMutex("why")
			for i := range tt.taken {
				mrs[i].Set(m.key, "another owner")
			}
			for i := range tt.down {
				mrs[len(mrs)-1-i].Close()
			}
			_, err := m.TryLockContext(t.Context())
			if !errors.Is(err, ErrNotAcquired) {
				t.Fatalf("TryLockContext = %v; want ErrNotAcquired", err)
			}
			if got := errors.Is(err, ErrTaken); got != tt.wantTaken {
				t.Errorf("errors.Is(%v, ErrTaken) = %v; want %v", err, got, tt.wantTaken)
			}
			if got := errors.Is(err, ErrNoQuorum); got != tt.wantNoQuorum {
				t.Errorf("errors.Is(%v, ErrNoQuorum) = %v; want %v", err, got, tt.wantNoQuorum)
			}
			if tt.wantNoQuorum {
				var nodeErr *NodeError
				if !errors.As(err, &nodeErr) {
					t.Errorf("TryLockContext = %v; want a *NodeError for a node down", err)
				}
			}
		})
	}
}

func TestSentinelsWrapErrNotAcquired(t *testing.T) {
	for _, err := range []error{ErrTaken, ErrNoQuorum} {
		if !errors.Is(err, ErrNotAcquired) {
			t.Errorf("errors.Is(%v, ErrNotAcquired) = false; want true", err)
		}
		if !strings.HasPrefix(err.Error(), "redlock: ") {
			t.Errorf("%q lacks the redlock: prefix", err)
		}
	}
	if errors.Is(ErrTaken, ErrNoQuorum) || errors.Is(ErrNoQuorum, ErrTaken) {
		t.Error("ErrTaken and ErrNoQuorum wrap each other; want them distinct")
	}
}

// TestLastAttemptSaysWhy checks that LockContext, when its wait ends, returns
// the reason of its last attempt with the context's error, and that a lock
// held by another goroutine of the process counts as taken.
func TestLastAttemptSaysWhy(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithTTL(time.Second), WithWaitTimeout(150*time.Millisecond))
	holder := c.NewMutex("last")
	holder.Lock()
	defer holder.Unlock()
	_, err := c.NewMutex("last").LockContext(t.Context())
	if !errors.Is(err, ErrTaken) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrNoQuorum) {
		t.Errorf("LockContext of a held lock = %v; want ErrTaken and DeadlineExceeded, not ErrNoQuorum", err)
	}
	if _, err := holder.TryLockContext(t.Context()); !errors.Is(err, ErrTaken) {
		t.Errorf("TryLockContext while another goroutine holds the Mutex = %v; want ErrTaken", err)
	}
	if _, err := holder.LockContext(t.Context()); !errors.Is(err, ErrTaken) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("LockContext while another goroutine holds the Mutex = %v; want ErrTaken and DeadlineExceeded", err)
	}
	mrs[1].Close()
	mrs[2].Close()
	_, err = c.NewMutex("down").LockContext(t.Context())
	if !errors.Is(err, ErrNoQuorum) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrTaken) {
		t.Errorf("LockContext with two nodes down = %v; want ErrNoQuorum and DeadlineExceeded, not ErrTaken", err)
	}
}

// ErrTaken means "one or more nodes refused because another owner holds the
// key". A fencing round refused because this attempt's own key vanished
// (expired, node restarted) is reported as ErrTaken although no one holds
// the key anywhere.
// TestFencingRoundThatFindsNoGrantIsNotTaken checks that a fencing round
// refused because the grants vanished (expired, a node restarted) is not
// reported as taken by another owner.
func TestFencingRoundThatFindsNoGrantIsNotTaken(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 1)
	c := newClient(t, clients, WithFencing())
	m := c.NewMutex("f")
	for i := range 2 {
		hooks[i].setOnRun(func(cl call, _ time.Time) {
			if cl.kind == "acquire" {
				mrs[i].Del(m.key) // the grant vanishes before the fence
			}
		})
	}
	_, err := m.TryLockContext(t.Context())
	settle(t, c.nodes)
	t.Logf("err = %v; key on %d nodes", err, keysOn(mrs, m.key))
	if err == nil {
		t.Fatal("TryLockContext succeeded")
	}
	if keysOn(mrs, m.key) == 0 && errors.Is(err, ErrTaken) {
		t.Errorf("no node holds the key, yet the error wraps ErrTaken: %v", err)
	}
	if !errors.Is(err, ErrNoQuorum) {
		t.Errorf("TryLockContext = %v; want ErrNoQuorum: the quorum's grants vanished", err)
	}
}

// Every error of a call never sent says so, by its type: there is no list
// of them to keep.
func TestErrorsOfCallsNeverSent(t *testing.T) {
	for _, err := range []error{errTooBusy, errReleaseOnAnswer, errNotRepaired, errTooLate, errEnded, errNodesClosed, errUnidentified,
		asSent(redis.ErrClosed), asSent(fmt.Errorf("wrapped: %w", redis.ErrClosed)), neverSent(errors.New("any"))} {
		if !notSent(err) || !neverRan(err) || maybeRan(err) {
			t.Errorf("%v: notSent %v, neverRan %v, maybeRan %v; want true, true, false", err, notSent(err), neverRan(err), maybeRan(err))
		}
	}
	for _, err := range []error{nil, redis.Nil, context.DeadlineExceeded, io.EOF, ErrClosed} {
		if notSent(err) {
			t.Errorf("notSent(%v) = true; want false", err)
		}
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	if !neverRan(refused) || maybeRan(refused) || notSent(refused) {
		t.Errorf("a refused dial: neverRan %v, maybeRan %v, notSent %v; want true, false, false", neverRan(refused), maybeRan(refused), notSent(refused))
	}
	if !maybeRan(io.EOF) || !maybeRan(context.DeadlineExceeded) {
		t.Error("a lost reply (EOF, a deadline) must count as maybe run")
	}
}
