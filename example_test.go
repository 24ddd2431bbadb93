package redlock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/seed62cefe0a/redlock"
)

// The basic form: one Redis on localhost, and a Mutex used like sync.Mutex.
func Example() {
	client, err := redlock.Dial(nil) // redis://127.0.0.1:6379/0
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	m := client.NewMutex("nightly-report")
	m.Lock()
	defer m.Unlock()
	// Only one process at a time runs this.
}

// Several independent masters: the lock is held when a majority grants it.
func ExampleDial() {
	client, err := redlock.Dial([]string{
		"redis://127.0.0.1:6379/0",
		"redis://127.0.0.1:6380/0",
		"redis://127.0.0.1:6381/0",
	}, redlock.WithTTL(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// One Client serves every lock of the process.
	migrations := client.NewMutex("migrations")
	billing := client.NewMutex("billing", redlock.WithTTL(30*time.Second))
	if migrations.TryLock() {
		defer migrations.Unlock()
	}
	billing.Lock()
	defer billing.Unlock()
}

// Clients you made yourself, of any go-redis kind, one per master.
func ExampleNew() {
	var masters []redis.UniversalClient
	for _, addr := range []string{"127.0.0.1:6379", "127.0.0.1:6380", "127.0.0.1:6381"} {
		rc := redis.NewClient(&redis.Options{Addr: addr})
		defer rc.Close()
		masters = append(masters, rc)
	}
	client, err := redlock.New(masters)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	_ = client.NewMutex("shared-resource")
}

// Scope the work to the held context: it ends if the lock is lost, before
// the lock could have expired, so the work can stop in time.
func ExampleMutex_LockContext() {
	client, err := redlock.Dial(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	m := client.NewMutex("reindex")

	held, err := m.LockContext(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer m.Unlock()

	if err := reindex(held); errors.Is(context.Cause(held), redlock.ErrLockLost) {
		log.Printf("lock lost; reindex stopped: %v", err)
	}
}

func reindex(ctx context.Context) error {
	select {
	case <-time.After(time.Second):
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Wait at most five seconds for the lock, then hold it for as long as the
// work takes: WithWaitTimeout bounds the wait only.
func ExampleWithWaitTimeout() {
	client, err := redlock.Dial(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	m := client.NewMutex("import", redlock.WithWaitTimeout(5*time.Second))

	held, err := m.LockContext(context.Background())
	if errors.Is(err, redlock.ErrNotAcquired) {
		log.Print("another process is importing; skipping")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer m.Unlock()
	_ = held // not bounded by the five seconds
}

// A runnable example on three embedded Redis servers.
func ExampleMutex_TryLock() {
	var urls []string
	for range 3 {
		server := miniredis.NewMiniRedis()
		if err := server.Start(); err != nil {
			log.Fatal(err)
		}
		defer server.Close()
		urls = append(urls, "redis://"+server.Addr())
	}
	first, err := redlock.Dial(urls)
	if err != nil {
		log.Fatal(err)
	}
	defer first.Close()
	second, err := redlock.Dial(urls)
	if err != nil {
		log.Fatal(err)
	}
	defer second.Close()

	a, b := first.NewMutex("job"), second.NewMutex("job")
	fmt.Println("a:", a.TryLock())
	fmt.Println("b while a holds it:", b.TryLock())
	a.Unlock()
	fmt.Println("b after a unlocked:", b.TryLock())
	b.Unlock()
	// Output:
	// a: true
	// b while a holds it: false
	// b after a unlocked: true
}
