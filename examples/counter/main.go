// Command counter shows redlock keeping a shared counter exact while workers
// race to increment it and one Redis master goes away.
//
// With no -redis flags it starts three embedded Redis servers (miniredis) for
// the lock and one for the counter, so it needs no Redis installed:
//
//	go run ./examples/counter
//
// Each worker has its own Client, as separate processes would. Under the lock
// a worker reads the counter, pauses, and writes it back plus one: without
// mutual exclusion, increments would be lost. Halfway through, one lock
// server is stopped; the quorum of the other two carries on.
//
// With -redis URLs it locks on those servers instead, keeps the counter on
// the first, and stops nothing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

type urlList []string

func (u *urlList) String() string     { return strings.Join(*u, ",") }
func (u *urlList) Set(v string) error { *u = append(*u, v); return nil }

type settings struct {
	urls       []string
	workers    int
	increments int
}

func main() {
	var s settings
	var urls urlList
	flag.Var(&urls, "redis", "URL of a Redis master to lock on (repeat for several); none starts three embedded servers")
	flag.IntVar(&s.workers, "workers", 4, "workers, each with its own Client")
	flag.IntVar(&s.increments, "increments", 50, "increments per worker")
	flag.Parse()
	s.urls = urls
	if err := run(context.Background(), os.Stdout, s); err != nil {
		fmt.Fprintln(os.Stderr, "counter:", err)
		os.Exit(1)
	}
}

// retryCounter is a slog handler that counts redlock's retried attempts.
type retryCounter struct{ retries atomic.Int64 }

func (r *retryCounter) Enabled(context.Context, slog.Level) bool { return true }
func (r *retryCounter) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *retryCounter) WithGroup(string) slog.Handler            { return r }
func (r *retryCounter) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message == "redlock: attempt failed; retrying" {
		r.retries.Add(1)
	}
	return nil
}

// quiet drops go-redis's own log lines, such as its reports of dials to the
// stopped server; the demo prints what matters itself.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func run(ctx context.Context, out io.Writer, s settings) error {
	redis.SetLogger(quiet{})
	if s.workers < 1 || s.increments < 1 {
		return errors.New("-workers and -increments must be at least 1")
	}
	env, err := setUp(out, s.urls)
	if err != nil {
		return err
	}
	defer env.close()
	const counterKey = "redlock-demo:counter"
	if err := env.counter.Set(ctx, counterKey, 0, 0).Err(); err != nil {
		return fmt.Errorf("reset counter: %w", err)
	}
	retries := &retryCounter{}
	total := s.workers * s.increments
	fmt.Fprintf(out, "%d workers × %d increments on %d lock servers\n", s.workers, s.increments, len(env.urls))
	if err := env.race(ctx, out, s, counterKey, slog.New(retries)); err != nil {
		return err
	}
	got, err := env.counter.Get(ctx, counterKey).Int()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "counter = %d, expected %d\n", got, total)
	fmt.Fprintf(out, "acquisitions: %d, retried attempts: %d\n", total, retries.retries.Load())
	if got != total {
		return fmt.Errorf("lost %d increments: mutual exclusion failed", total-got)
	}
	fmt.Fprintln(out, "OK")
	return nil
}

// env is where the demo runs: the lock servers and the counter's store.
type env struct {
	urls        []string               // of the lock servers
	lockServers []*miniredis.Miniredis // embedded, if the demo started them
	counter     *redis.Client
	closers     []func()
}

// setUp connects to the servers at urls, or starts three embedded lock
// servers and one for the counter if there are none.
func setUp(out io.Writer, urls []string) (*env, error) {
	e := &env{urls: urls}
	counterAddr := ""
	if len(urls) == 0 {
		for range 4 {
			mr, err := miniredis.Run()
			if err != nil {
				e.close()
				return nil, err
			}
			e.closers = append(e.closers, mr.Close)
			counterAddr = mr.Addr()
			if len(e.lockServers) < 3 {
				e.lockServers = append(e.lockServers, mr)
				e.urls = append(e.urls, "redis://"+mr.Addr()+"/0")
			}
		}
		fmt.Fprintf(out, "started %d embedded Redis servers for the lock and one for the counter\n", len(e.lockServers))
	} else {
		opt, err := redis.ParseURL(urls[0])
		if err != nil {
			return nil, err
		}
		counterAddr = opt.Addr
	}
	e.counter = redis.NewClient(&redis.Options{Addr: counterAddr})
	e.closers = append(e.closers, func() { e.counter.Close() })
	return e, nil
}

func (e *env) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
}

// race runs the workers, each with its own Client, incrementing the counter
// under the lock; halfway through it stops an embedded lock server.
func (e *env) race(ctx context.Context, out io.Writer, s settings, counterKey string, logger *slog.Logger) error {
	total := s.workers * s.increments
	var done atomic.Int64
	var stopOnce sync.Once
	errs := make(chan error, s.workers)
	var wg sync.WaitGroup
	for range s.workers {
		client, err := redlock.Dial(e.urls, redlock.WithLogger(logger), redlock.WithTTL(2*time.Second))
		if err != nil {
			return err
		}
		defer client.Close()
		mutex := client.NewMutex("demo-counter")
		wg.Go(func() {
			for range s.increments {
				if err := e.increment(ctx, mutex, counterKey); err != nil {
					errs <- err
					return
				}
				if done.Add(1) == int64(total/2) && len(e.lockServers) > 0 {
					stopOnce.Do(func() {
						fmt.Fprintf(out, "halfway: stopping lock server %s\n", e.lockServers[2].Addr())
						e.lockServers[2].Close()
					})
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// increment reads the counter and writes it back plus one, under the lock.
func (e *env) increment(ctx context.Context, mutex *redlock.Mutex, counterKey string) error {
	mutex.Lock()
	defer mutex.Unlock()
	value, err := e.counter.Get(ctx, counterKey).Int()
	if err != nil {
		return err
	}
	time.Sleep(200 * time.Microsecond) // widen the race window
	return e.counter.Set(ctx, counterKey, value+1, 0).Err()
}
