//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed62cefe0a/redlock"
)

// A held context that has ended by the time COMMAND would start, as when
// the lock is lost just after its acquisition, keeps COMMAND from starting.
func TestStartJobAfterLoss(t *testing.T) {
	held, end := context.WithCancelCause(context.Background())
	end(fmt.Errorf("%w: no quorum confirmed it", redlock.ErrLockLost))
	ran := filepath.Join(t.TempDir(), "ran")
	j, err := startJob(held, "job", []string{"sh", "-c", `touch "$0"`, ran}, os.Environ(), strings.NewReader(""), io.Discard, io.Discard)
	if j != nil {
		select {
		case <-j.done:
		case <-time.After(10 * time.Second):
			j.signal(9)
			t.Fatal("COMMAND started, and still runs after 10s")
		}
	}
	if !errors.Is(err, redlock.ErrLockLost) {
		t.Errorf("startJob with an ended held = %v; want an error that wraps ErrLockLost", err)
	}
	if _, err := os.Stat(ran); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("COMMAND ran (stat %s: %v); want it never started", ran, err)
	}
}
