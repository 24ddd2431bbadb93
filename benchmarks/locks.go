package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	redsyncredis "github.com/go-redsync/redsync/v4/redis"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

// locker is one library's lock, as a worker uses it.
type locker interface {
	lock(ctx context.Context) error
	unlock(ctx context.Context) error
}

// library makes lockers; one set per worker, as separate processes would
// have.
type library struct {
	name string
	maxN int // largest number of masters it supports
	// newSet makes a locker for each name, over one set of connections,
	// as one process of a user's would.
	newSet func(addrs []string, names []string) ([]locker, func(), error)
}

// newFor makes one worker's locker on name.
func (l library) newFor(addrs []string, name string) (locker, func(), error) {
	set, closeFn, err := l.newSet(addrs, []string{name})
	if err != nil {
		return nil, nil, err
	}
	return set[0], closeFn, nil
}

func goRedisClients(addrs []string) ([]*redis.Client, func()) {
	var clients []*redis.Client
	for _, addr := range addrs {
		// go-redis defaults, as a user would have them.
		clients = append(clients, redis.NewClient(&redis.Options{Addr: addr}))
	}
	return clients, func() {
		for _, c := range clients {
			c.Close()
		}
	}
}

var libraries = []library{
	{
		name: "redlock", maxN: 99,
		newSet: func(addrs []string, names []string) ([]locker, func(), error) {
			var urls []string
			for _, addr := range addrs {
				urls = append(urls, "redis://"+addr+"/0")
			}
			client, err := redlock.Dial(urls)
			if err != nil {
				return nil, nil, err
			}
			var set []locker
			for _, name := range names {
				set = append(set, redlockLocker{client.NewMutex(name)})
			}
			return set, func() { client.Close() }, nil
		},
	},
	{
		name: "redsync", maxN: 99,
		newSet: func(addrs []string, names []string) ([]locker, func(), error) {
			return newRedsync(addrs, names)
		},
	},
	{
		name: "redsync 1ms", maxN: 99,
		newSet: func(addrs []string, names []string) ([]locker, func(), error) {
			return newRedsync(addrs, names, redsync.WithRetryDelay(time.Millisecond), redsync.WithTries(1<<20))
		},
	},
	{
		name: "redislock", maxN: 1,
		newSet: func(addrs []string, names []string) ([]locker, func(), error) {
			clients, closeAll := goRedisClients(addrs)
			client := redislock.New(clients[0])
			var set []locker
			for _, name := range names {
				set = append(set, &redislockLocker{client: client, key: name})
			}
			return set, closeAll, nil
		},
	},
}

func newRedsync(addrs []string, names []string, opts ...redsync.Option) ([]locker, func(), error) {
	clients, closeAll := goRedisClients(addrs)
	var pools []redsyncredis.Pool
	for _, c := range clients {
		pools = append(pools, goredis.NewPool(c))
	}
	rs := redsync.New(pools...)
	var set []locker
	for _, name := range names {
		set = append(set, redsyncLocker{rs.NewMutex(name, opts...)})
	}
	return set, closeAll, nil
}

type redlockLocker struct{ m *redlock.Mutex }

func (l redlockLocker) lock(ctx context.Context) error {
	_, err := l.m.LockContext(ctx)
	return err
}
func (l redlockLocker) unlock(ctx context.Context) error { return l.m.UnlockContext(ctx) }

type redsyncLocker struct{ m *redsync.Mutex }

// lock retries redsync's ErrFailed (its tries ran out), as a user of a
// blocking lock would.
func (l redsyncLocker) lock(ctx context.Context) error {
	for {
		err := l.m.LockContext(ctx)
		var taken *redsync.ErrTaken
		if err == nil || ctx.Err() != nil || !(errors.Is(err, redsync.ErrFailed) || errors.As(err, &taken)) {
			return err
		}
	}
}

func (l redsyncLocker) unlock(ctx context.Context) error {
	ok, err := l.m.UnlockContext(ctx)
	if err == nil && !ok {
		err = errors.New("redsync: unlock not confirmed")
	}
	return err
}

type redislockLocker struct {
	client *redislock.Client
	key    string
	held   *redislock.Lock
}

// lock obtains with a 1ms linear backoff until ctx ends (redislock's default
// is not to retry).
func (l *redislockLocker) lock(ctx context.Context) error {
	lock, err := l.client.Obtain(ctx, l.key, 8*time.Second, &redislock.Options{RetryStrategy: redislock.LinearBackoff(time.Millisecond)})
	if err != nil {
		return fmt.Errorf("redislock: %w", err)
	}
	l.held = lock
	return nil
}

func (l *redislockLocker) unlock(ctx context.Context) error { return l.held.Release(ctx) }

// benchPermits is the Semaphore's limit in its scenarios.
const benchPermits = 4

// newSemaphoreLocker makes lockers that each take one of permits permits of
// a redlock Semaphore, on a Client of their own.
func newSemaphoreLocker(permits int) func(addrs []string, name string) (locker, func(), error) {
	return func(addrs []string, name string) (locker, func(), error) {
		var urls []string
		for _, addr := range addrs {
			urls = append(urls, "redis://"+addr+"/0")
		}
		client, err := redlock.Dial(urls)
		if err != nil {
			return nil, nil, err
		}
		return &semaphoreLocker{s: client.NewSemaphore(name, permits)}, func() { client.Close() }, nil
	}
}

type semaphoreLocker struct {
	s    *redlock.Semaphore
	held *redlock.Permit
}

func (l *semaphoreLocker) lock(ctx context.Context) error {
	p, err := l.s.Acquire(ctx)
	if err != nil {
		return err
	}
	l.held = p
	return nil
}

func (l *semaphoreLocker) unlock(ctx context.Context) error { return l.held.Release(ctx) }
