package redlock

import (
	"context"
	"errors"
	"testing"

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
	}
	for _, tt := range tests {
		if got := permanent(tt.err); got != tt.want {
			t.Errorf("permanent(%v) = %v; want %v", tt.err, got, tt.want)
		}
	}
}
