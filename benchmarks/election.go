package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/seed62cefe0a/redlock"
)

// dial returns a redlock Client of the servers at addrs.
func dial(addrs []string) (*redlock.Client, error) {
	var urls []string
	for _, addr := range addrs {
		urls = append(urls, "redis://"+addr+"/0")
	}
	return redlock.Dial(urls)
}

// termLocker is a candidate of an Election, as a worker uses a lock:
// lock campaigns, unlock resigns.
type termLocker struct {
	e    *redlock.Election
	term *redlock.Term
}

func newTermLocker(addrs []string, name string) (locker, func(), error) {
	client, err := dial(addrs)
	if err != nil {
		return nil, nil, err
	}
	return &termLocker{e: client.NewElection(name)}, func() { client.Close() }, nil
}

func (l *termLocker) lock(ctx context.Context) error {
	var err error
	l.term, err = l.e.Campaign(ctx, "candidate")
	return err
}

func (l *termLocker) unlock(ctx context.Context) error { return l.term.Resign(ctx) }

// newFencedLocker is a Mutex with fencing tokens: a term is one, and its
// acquisition takes the same second round, which records the token.
func newFencedLocker(addrs []string, name string) (locker, func(), error) {
	client, err := dial(addrs)
	if err != nil {
		return nil, nil, err
	}
	return redlockLocker{client.NewMutex(name, redlock.WithFencing())}, func() { client.Close() }, nil
}

// handover runs workers, each with a locker of its own, on one lock with a
// 1ms section, and measures the hand-over: from one holder's unlock
// returning to the next holder's lock returning. The next holder may be
// told before the unlock returns, which counts as 0.
func handover(name string, newFor func(addrs []string, name string) (locker, func(), error), addrs []string, servers []*server, workers int, duration time.Duration) result {
	flush(servers)
	lockers := make([]locker, workers)
	for i := range lockers {
		l, closeFn, err := newFor(addrs, "bench-handover")
		if err != nil {
			return result{Scenario: name, Library: "redlock", Notes: err.Error()}
		}
		defer closeFn()
		lockers[i] = l
	}
	var mu sync.Mutex
	var released time.Time // when the last holder's unlock returned
	var gaps []time.Duration
	var failures int64
	var cycles int64
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, l := range lockers {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := l.lock(ctx); err != nil {
					if ctx.Err() == nil {
						mu.Lock()
						failures++
						mu.Unlock()
					}
					continue
				}
				at := time.Now()
				mu.Lock()
				if !released.IsZero() {
					gaps = append(gaps, max(0, at.Sub(released)))
				}
				cycles++
				mu.Unlock()
				time.Sleep(time.Millisecond)
				if err := l.unlock(context.Background()); err != nil {
					mu.Lock()
					failures++
					mu.Unlock()
				}
				mu.Lock()
				released = time.Now()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	return result{
		Scenario: name, Library: "redlock", Nodes: len(addrs), Workers: workers,
		Seconds: elapsed.Seconds(), Cycles: cycles, PerSecond: float64(cycles) / elapsed.Seconds(), Failures: failures,
		Notes: fmt.Sprintf("hand-over p50 %.0fµs, p99 %.0fµs, over %d hand-overs", micros(percentile(gaps, 0.5)), micros(percentile(gaps, 0.99)), len(gaps)),
	}
}

// observationLag measures, on 3 masters, how long after Proclaim or Resign
// returns an observer on another Client receives the new state.
func observationLag(addrs []string, servers []*server, duration time.Duration) result {
	flush(servers)
	leaderClient, err := dial(addrs)
	if err != nil {
		return result{Scenario: "election-observe", Library: "redlock", Notes: err.Error()}
	}
	defer leaderClient.Close()
	watchClient, err := dial(addrs)
	if err != nil {
		return result{Scenario: "election-observe", Library: "redlock", Notes: err.Error()}
	}
	defer watchClient.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := watchClient.NewElection("bench-observe").Observe(ctx)
	<-states // the current state
	e := leaderClient.NewElection("bench-observe")

	// await returns how long after since the observer received a state
	// that match accepts, or an error after a second.
	await := func(since time.Time, match func(redlock.Leader) bool) (time.Duration, error) {
		timeout := time.After(time.Second)
		for {
			select {
			case st, ok := <-states:
				if !ok {
					return 0, errors.New("the observer's channel closed")
				}
				if match(st) {
					return max(0, time.Since(since)), nil
				}
			case <-timeout:
				return 0, errors.New("no such state within 1s")
			}
		}
	}
	var proclaimLags, resignLags []time.Duration
	var failures int64
	start := time.Now()
	for n := 0; time.Since(start) < duration; n++ {
		term, err := e.Campaign(ctx, fmt.Sprintf("v%d", n))
		if err != nil {
			failures++
			continue
		}
		if _, err := await(time.Now(), func(st redlock.Leader) bool { return st.Term == term.Number() }); err != nil {
			failures++
		}
		for i := range 5 {
			value := fmt.Sprintf("v%d.%d", n, i)
			if err := term.Proclaim(ctx, value); err != nil {
				failures++
				continue
			}
			lag, err := await(time.Now(), func(st redlock.Leader) bool { return st.Value == value })
			if err != nil {
				failures++
				continue
			}
			proclaimLags = append(proclaimLags, lag)
		}
		if err := term.Resign(ctx); err != nil {
			failures++
			continue
		}
		lag, err := await(time.Now(), func(st redlock.Leader) bool { return st.Term == 0 })
		if err != nil {
			failures++
			continue
		}
		resignLags = append(resignLags, lag)
	}
	elapsed := time.Since(start)
	return result{
		Scenario: "election-observe", Library: "redlock", Nodes: len(addrs), Workers: 1,
		Seconds: elapsed.Seconds(), Cycles: int64(len(proclaimLags) + len(resignLags)), Failures: failures,
		Notes: fmt.Sprintf("lag after Proclaim p50 %.0fµs p99 %.0fµs (%d); after Resign p50 %.0fµs p99 %.0fµs (%d); node timeout 500ms",
			micros(percentile(proclaimLags, 0.5)), micros(percentile(proclaimLags, 0.99)), len(proclaimLags),
			micros(percentile(resignLags, 0.5)), micros(percentile(resignLags, 0.99)), len(resignLags)),
	}
}

// idleElections holds count elections' terms on one Client, then adds
// count observers on it, one per election, and reports what each costs
// while nothing changes: the process's CPU and the commands the servers
// run, as manyHeld does.
func idleElections(addrs []string, servers []*server, count int, hold time.Duration) []result {
	flush(servers)
	client, err := dial(addrs)
	if err != nil {
		return []result{{Scenario: "elections-idle", Library: "redlock", Notes: err.Error()}}
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	elections := make([]*redlock.Election, count)
	terms := make([]*redlock.Term, count)
	var failures int64
	for i := range elections {
		elections[i] = client.NewElection(fmt.Sprintf("bench-idle-%d", i))
		if terms[i], err = elections[i].Campaign(ctx, "leader"); err != nil {
			failures++
		}
	}
	counter := newCommandCounter(servers)
	defer counter.close()
	measure := func(scenario, what string) result {
		idle := measureIdle(counter, hold)
		return result{
			Scenario: scenario, Library: "redlock", Nodes: len(addrs), Workers: count,
			Seconds: idle.elapsed.Seconds(), Failures: failures,
			Notes: fmt.Sprintf("%s, %s", what, idle),
		}
	}
	results := []result{measure("elections-idle", fmt.Sprintf("%d terms held", count))}
	var observers sync.WaitGroup
	for _, e := range elections {
		states := e.Observe(ctx)
		observers.Go(func() {
			for range states {
			}
		})
	}
	time.Sleep(time.Second) // their first reads
	results = append(results, measure("elections-observed", fmt.Sprintf("%d terms held and %d observers", count, count)))
	cancel()
	observers.Wait()
	for _, t := range terms {
		if t != nil {
			if err := t.Resign(context.Background()); err != nil {
				failures++
			}
		}
	}
	return results
}
