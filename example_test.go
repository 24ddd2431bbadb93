package redlock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"sync"
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

// A fenced resource: a Redis key that takes a write only with a token larger
// than any it has seen, so a holder whose lock expired while it was paused is
// turned away. Fencing tokens need WithFencing.
func ExampleMutex_Token() {
	var urls []string
	for range 3 {
		server := miniredis.NewMiniRedis()
		if err := server.Start(); err != nil {
			log.Fatal(err)
		}
		defer server.Close()
		urls = append(urls, "redis://"+server.Addr())
	}
	client, err := redlock.Dial(urls, redlock.WithFencing())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	storage := miniredis.NewMiniRedis()
	if err := storage.Start(); err != nil {
		log.Fatal(err)
	}
	defer storage.Close()
	resource := redis.NewClient(&redis.Options{Addr: storage.Addr()})
	defer resource.Close()
	// KEYS[1] data, KEYS[2] largest token seen; ARGV[1] value, ARGV[2] token.
	fencedWrite := redis.NewScript(`
		if tonumber(ARGV[2]) <= tonumber(redis.call('GET', KEYS[2]) or '0') then
			return 0
		end
		redis.call('SET', KEYS[2], ARGV[2])
		redis.call('SET', KEYS[1], ARGV[1])
		return 1`)
	write := func(value string, token uint64) bool {
		ok, err := fencedWrite.Run(context.Background(), resource, []string{"report", "report:token"}, value, token).Bool()
		if err != nil {
			log.Fatal(err)
		}
		return ok
	}

	m := client.NewMutex("report")
	m.Lock()
	stale := m.Token() // a holder that will pause past its TTL
	m.Unlock()
	m.Lock()
	fmt.Println("current holder's write accepted:", write("fresh", m.Token()))
	m.Unlock()
	fmt.Println("stale holder's write accepted:", write("stale", stale))
	// Output:
	// current holder's write accepted: true
	// stale holder's write accepted: false
}

// embeddedMasters starts n embedded Redis servers for the examples, and
// returns their URLs and a func that stops them.
func embeddedMasters(n int) (urls []string, stop func()) {
	var servers []*miniredis.Miniredis
	for range n {
		server := miniredis.NewMiniRedis()
		if err := server.Start(); err != nil {
			log.Fatal(err)
		}
		servers = append(servers, server)
		urls = append(urls, "redis://"+server.Addr())
	}
	return urls, func() {
		for _, server := range servers {
			server.Close()
		}
	}
}

// A scoped critical section: Do acquires the lock, runs the func while it
// is held, and releases it, even if the func fails or panics. The error says
// whether the job failed, the lock was lost while it ran, or both.
func ExampleMutex_Do() {
	urls, stop := embeddedMasters(3)
	defer stop()
	client, err := redlock.Dial(urls, redlock.WithMaxHold(time.Hour))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	m := client.NewMutex("nightly-report")
	err = m.Do(context.Background(), func(held context.Context) error {
		for step := range 3 {
			if err := held.Err(); err != nil {
				return err // the lock was lost: stop before the next step
			}
			fmt.Println("step", step)
		}
		return nil
	})
	switch {
	case errors.Is(err, redlock.ErrLockLost):
		fmt.Println("lost the lock while the report ran:", err)
	case errors.Is(err, redlock.ErrNotAcquired):
		fmt.Println("did not run:", err)
	case err != nil:
		fmt.Println("the report failed:", err)
	default:
		fmt.Println("done")
	}
	// Output:
	// step 0
	// step 1
	// step 2
	// done
}

// Status reads a lock without taking it: whether it is held, whether by this
// Mutex, for how long a quorum will keep it, and how many wait for it.
func ExampleMutex_Status() {
	urls, stop := embeddedMasters(3)
	defer stop()
	client, err := redlock.Dial(urls, redlock.WithTTL(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	ctx := context.Background()
	m := client.NewMutex("migrations")
	s, err := m.Status(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("free: held=%v\n", s.Held)

	m.Lock()
	defer m.Unlock()
	s, err = client.NewMutex("migrations").Status(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("locked elsewhere: held=%v mine=%v ttl>9s=%v waiters=%d\n", s.Held, s.Mine, s.TTL > 9*time.Second, s.Waiters)
	// Output:
	// free: held=false
	// locked elsewhere: held=true mine=false ttl>9s=true waiters=0
}

// redisLogs passes go-redis's own log lines, such as its connection pool's
// failed dials, to slog.
type redisLogs struct{ *slog.Logger }

func (l redisLogs) Printf(ctx context.Context, format string, v ...any) {
	l.WarnContext(ctx, fmt.Sprintf(format, v...), "from", "go-redis")
}

// go-redis writes its warnings to stderr through a logger of its own,
// global to the process; an application can send them to slog instead.
func Example_goRedisLogs() {
	redis.SetLogger(redisLogs{slog.Default()})

	client, err := redlock.Dial(nil, redlock.WithLogger(slog.Default()))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
}

// A Semaphore lets up to N holders in at once, across processes: here, at
// most 2 of 5 encoders run together. Each permit is a lease of its own,
// extended by the watchdog and freed by Release, or by its TTL if its
// holder crashes.
func ExampleSemaphore() {
	urls, stop := embeddedMasters(3)
	defer stop()
	client, err := redlock.Dial(urls)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	encoders := client.NewSemaphore("encoders", 2)
	var mu sync.Mutex
	running, most := 0, 0
	var jobs sync.WaitGroup
	for range 5 {
		jobs.Go(func() {
			err := encoders.Do(context.Background(), func(held context.Context) error {
				mu.Lock()
				running++
				most = max(most, running)
				mu.Unlock()
				time.Sleep(10 * time.Millisecond) // encode, while held.Err() == nil
				mu.Lock()
				running--
				mu.Unlock()
				return nil
			})
			if err != nil {
				log.Print(err)
			}
		})
	}
	jobs.Wait()
	st, err := encoders.Status(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("at most", most, "encoders ran at once")
	fmt.Printf("now: %d of %d permits held, %d waiting\n", st.Held, st.Permits, st.Waiters)
	// Output:
	// at most 2 encoders ran at once
	// now: 0 of 2 permits held, 0 waiting
}

// A leader's term number fences its writes: the store remembers the largest
// term it has seen, and refuses a write from an earlier term, such as one
// from a leader that was paused past its lease and has not noticed yet.
func ExampleElection() {
	urls, stop := embeddedMasters(3)
	defer stop()
	client, err := redlock.Dial(urls)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	election := client.NewElection("scheduler")
	var store fencedStore
	a, err := election.Campaign(ctx, "node-a")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(store.write(a.Number(), "plan by node-a"))
	leader, err := election.Leader(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s leads in term %d\n", leader.Value, leader.Term)
	if err := a.Resign(ctx); err != nil {
		log.Fatal(err)
	}

	b, err := election.Campaign(ctx, "node-b")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Resign(ctx)
	fmt.Println(store.write(b.Number(), "plan by node-b"))
	// node-a, deposed, writes late with its old term.
	fmt.Println(store.write(a.Number(), "late plan by node-a"))
	fmt.Println("stored:", store.value)
	// Output:
	// <nil>
	// node-a leads in term 1
	// <nil>
	// term 1 refused: term 2 has written
	// stored: plan by node-b
}

// fencedStore is a resource that takes writes fenced with term numbers.
type fencedStore struct {
	mu      sync.Mutex
	highest uint64
	value   string
}

func (s *fencedStore) write(term uint64, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if term < s.highest {
		return fmt.Errorf("term %d refused: term %d has written", term, s.highest)
	}
	s.highest, s.value = term, value
	return nil
}
