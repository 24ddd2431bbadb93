package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

// REDLOCK_CHAOS_TRACE names a folder where a chaos run writes what happened,
// on CLOCK_MONOTONIC: the test's faults, each worker's log and lock events,
// and a sampling of every server (uptime, the lock's holder and PTTL).
var traceDir = os.Getenv("REDLOCK_CHAOS_TRACE")

type tracer struct {
	mu  sync.Mutex
	enc *json.Encoder
	f   *os.File
}

func newTracer(name string) *tracer {
	if traceDir == "" {
		return nil
	}
	os.MkdirAll(traceDir, 0o755)
	f, err := os.OpenFile(filepath.Join(traceDir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil
	}
	return &tracer{enc: json.NewEncoder(f), f: f}
}

func (tr *tracer) event(what string, kv ...any) {
	if tr == nil {
		return
	}
	m := map[string]any{"mono": monotonic(), "pid": os.Getpid(), "ev": what}
	for i := 0; i+1 < len(kv); i += 2 {
		v := kv[i+1]
		if err, ok := v.(error); ok {
			v = err.Error()
		}
		m[fmt.Sprint(kv[i])] = v
	}
	tr.mu.Lock()
	tr.enc.Encode(m)
	tr.mu.Unlock()
}

func (tr *tracer) close() {
	if tr != nil {
		tr.f.Close()
	}
}

// workerTraceOptions returns a logger and an observer writing to tr.
func workerTraceOptions(tr *tracer) []redlock.Option {
	if tr == nil {
		return nil
	}
	handler := slog.NewJSONHandler(tr.f, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Int64("mono", monotonic())
		}
		return a
	}})
	return []redlock.Option{
		redlock.WithLogger(slog.New(handler).With("pid", os.Getpid())),
		redlock.WithObserver(&redlock.Observer{
			Acquired: func(e redlock.AcquiredEvent) {
				tr.event("acquired", "wait", e.Wait.String(), "attempts", e.Attempts, "token", e.Token)
			},
			NotAcquired: func(e redlock.NotAcquiredEvent) { tr.event("not_acquired", "attempts", e.Attempts, "err", e.Err) },
			Released:    func(e redlock.ReleasedEvent) { tr.event("released", "held", e.Held.String(), "lost", e.Lost) },
			Lost:        func(e redlock.LostEvent) { tr.event("lost", "cause", e.Cause.String(), "held", e.Held.String()) },
			NodeError:   func(e redlock.NodeErrorEvent) { tr.event("node_error", "node", e.Node, "err", e.Err) },
		}),
	}
}

// sampleServers records, every 10ms until ctx ends, each server's uptime
// and the lock key's value and PTTL, read directly (not through a proxy).
func sampleServers(ctx context.Context, tr *tracer, wg *sync.WaitGroup) {
	if tr == nil {
		return
	}
	var clients []*redis.Client
	for _, s := range suite.servers {
		clients = append(clients, redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1, DialTimeout: 50 * time.Millisecond,
			ReadTimeout: 50 * time.Millisecond, WriteTimeout: 50 * time.Millisecond}))
	}
	key := "redlock:{" + chaosLock + "}"
	wg.Go(func() {
		defer func() {
			for _, c := range clients {
				c.Close()
			}
		}()
		last := make([]string, len(clients))
		for ctx.Err() == nil {
			for i, c := range clients {
				state := "down"
				pipe := c.Pipeline()
				info := pipe.Info(ctx, "server")
				value := pipe.Get(ctx, key)
				pttl := pipe.PTTL(ctx, key)
				queue := pipe.LLen(ctx, key+":waiters")
				pipe.Exec(ctx)
				if info.Err() == nil {
					up := "?"
					for _, line := range strings.Split(info.Val(), "\r\n") {
						if v, ok := strings.CutPrefix(line, "uptime_in_seconds:"); ok {
							up = v
						}
					}
					holder := value.Val()
					if len(holder) > 12 {
						holder = holder[len(holder)-12:]
					}
					state = fmt.Sprintf("up=%s holder=%s pttl~%v queue=%d", up, holder, pttl.Val().Round(250*time.Millisecond), queue.Val())
				}
				if state != last[i] {
					last[i] = state
					tr.event("server", "node", i, "state", state)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// traceProxies records every 250ms how many connections each proxy has
// accepted: a client reconnects after each call that timed out.
func traceProxies(ctx context.Context, tr *tracer, proxies []*faultProxy, wg *sync.WaitGroup) {
	if tr == nil {
		return
	}
	wg.Go(func() {
		for ctx.Err() == nil {
			var accepts []int64
			for _, p := range proxies {
				accepts = append(accepts, p.accepts.Load())
			}
			tr.event("proxies", "accepts", accepts)
			time.Sleep(250 * time.Millisecond)
		}
	})
}
