package redlock

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// campaign campaigns on e with value and fails the test on an error.
func campaign(t *testing.T, e *Election, value string) *Term {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	term, err := e.Campaign(ctx, value)
	if err != nil {
		t.Fatalf("Campaign(%q): %v", value, err)
	}
	return term
}

// resign resigns term and fails the test on an error.
func resign(t *testing.T, term *Term) {
	t.Helper()
	if err := term.Resign(context.Background()); err != nil {
		t.Fatalf("Resign of term %d: %v", term.Number(), err)
	}
}

// leaderIs checks what Leader reads.
func leaderIs(t *testing.T, e *Election, value string, term uint64) Leader {
	t.Helper()
	got, err := e.Leader(context.Background())
	if err != nil {
		t.Fatalf("Leader: %v; want %q in term %d", err, value, term)
	}
	if got.Value != value || got.Term != term || got.TTL <= 0 {
		t.Fatalf("Leader() = %+v; want %q in term %d with a TTL", got, value, term)
	}
	return got
}

// noLeader checks that Leader reports ErrNoLeader.
func noLeader(t *testing.T, e *Election) {
	t.Helper()
	if got, err := e.Leader(context.Background()); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("Leader() = %+v, %v; want ErrNoLeader", got, err)
	}
}

func TestElectionCampaignProclaimResign(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	e := c.NewElection("jobs")
	noLeader(t, e)

	term := campaign(t, e, "a:1")
	if term.Number() == 0 || term.Value() != "a:1" {
		t.Fatalf("term %d with value %q; want a number and %q", term.Number(), term.Value(), "a:1")
	}
	if err := term.Context().Err(); err != nil {
		t.Fatalf("Context().Err() = %v; want nil while leading", err)
	}
	leaderIs(t, e, "a:1", term.Number())

	value := "b:2\nwith a newline and a : colon"
	if err := term.Proclaim(context.Background(), value); err != nil {
		t.Fatalf("Proclaim: %v", err)
	}
	if term.Value() != value {
		t.Fatalf("Value() = %q; want %q", term.Value(), value)
	}
	leaderIs(t, e, value, term.Number())

	resign(t, term)
	if cause := context.Cause(term.Context()); !errors.Is(cause, context.Canceled) {
		t.Fatalf("cause after Resign = %v; want context.Canceled", cause)
	}
	noLeader(t, e)
	// Resign waits for a quorum; the last node follows in the background.
	waitFor(t, "the lock's key and the leader's record to be gone after Resign", func() bool {
		return keysOn(mrs, e.lock.key) == 0 && keysOn(mrs, e.lock.key+recordSuffix) == 0
	})
	if err := term.Resign(context.Background()); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("second Resign = %v; want ErrNotHeld", err)
	}
	if err := term.Proclaim(context.Background(), "late"); !errors.Is(err, ErrLockLost) {
		t.Fatalf("Proclaim after Resign = %v; want ErrLockLost", err)
	}

	// The next term has a larger number.
	next := campaign(t, e, "c")
	if next.Number() <= term.Number() {
		t.Fatalf("next term %d; want more than %d", next.Number(), term.Number())
	}
	resign(t, next)
}

func TestElectionBadInput(t *testing.T) {
	_, clients := servers(t, 1)
	c := newClient(t, clients)
	for _, tc := range []struct {
		name string
		e    *Election
		want string
	}{
		{"empty name", c.NewElection(""), "election name is empty"},
		{"brace", c.NewElection("a{b"), "brace"},
		{"exact key", c.NewElection("a", WithExactKey()), "WithExactKey does not apply to an Election"},
		{"bad TTL", c.NewElection("a", WithTTL(-1)), "TTL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.e.Campaign(context.Background(), "v"); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Campaign error = %v; want one with %q", err, tc.want)
			}
			if _, err := tc.e.Leader(context.Background()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Leader error = %v; want one with %q", err, tc.want)
			}
			if _, open := <-tc.e.Observe(context.Background()); open {
				t.Errorf("Observe sent a state; want its channel closed")
			}
		})
	}
	if msg := panicMessage(func() { c.NewElection("a").Campaign(nil, "v") }); !strings.Contains(msg, "redlock: nil Context") { //nolint:staticcheck // the nil is the test
		t.Errorf("Campaign(nil) panicked with %q; want a redlock: message", msg)
	}
}

// TestElectionOneLeaderTermsIncrease runs candidates of three Clients, two
// goroutines each on one Election, and checks that no two terms' contexts
// are live at once and that each term's number is larger than the last.
func TestElectionOneLeaderTermsIncrease(t *testing.T) {
	_, clients := servers(t, 3)
	var leading atomic.Int32
	var mu sync.Mutex
	var last uint64
	var terms int
	var wg sync.WaitGroup
	for i := range 3 {
		e := newClient(t, clients).NewElection("one")
		for range 2 {
			wg.Go(func() {
				for range 10 {
					term := campaign(t, e, "candidate")
					if n := leading.Add(1); n != 1 {
						t.Errorf("%d leaders at once", n)
					}
					mu.Lock()
					if term.Number() <= last {
						t.Errorf("term %d began after term %d", term.Number(), last)
					}
					last = term.Number()
					terms++
					mu.Unlock()
					if err := term.Context().Err(); err != nil {
						t.Errorf("term %d of client %d ended as it began: %v", term.Number(), i, err)
					}
					time.Sleep(time.Millisecond)
					leading.Add(-1)
					resign(t, term)
				}
			})
		}
	}
	wg.Wait()
	if terms != 60 {
		t.Fatalf("%d terms; want 60", terms)
	}
}

// TestElectionCampaignGivesUpCleanly: a candidate whose ctx ends leaves no
// place in the queue, and no key.
func TestElectionCampaignGivesUpCleanly(t *testing.T) {
	mrs, clients := servers(t, 3)
	leader := campaign(t, newClient(t, clients).NewElection("q"), "leader")
	e := newClient(t, clients).NewElection("q")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	term, err := e.Campaign(ctx, "waiting")
	if term != nil || !errors.Is(err, ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Campaign = %v, %v; want ErrNotAcquired and DeadlineExceeded", term, err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("Campaign returned %v after its ctx ended; want promptly", elapsed)
	}
	// Campaign waits for a quorum of nodes to take it out of the queue;
	// the last node follows in the background.
	waitFor(t, "the queue to be empty on every server", func() bool {
		for _, mr := range mrs {
			if q, _ := mr.List(e.lock.key + queueSuffix); len(q) != 0 {
				return false
			}
		}
		return true
	})
	resign(t, leader)
	waitFor(t, "the lock's key to be gone", func() bool { return keysOn(mrs, e.lock.key) == 0 })
}

// TestElectionResignWakesTheNextCandidate: with polls 10 s apart, the next
// candidate leads soon after Resign only if Resign woke it.
func TestElectionResignWakesTheNextCandidate(t *testing.T) {
	_, clients := servers(t, 3)
	opts := []Option{WithRetryDelay(10 * time.Second)}
	first := campaign(t, newClient(t, clients, opts...).NewElection("wake", opts...), "first")
	e := newClient(t, clients, opts...).NewElection("wake", opts...)
	queued := make(chan *Term, 1)
	go func() {
		term, err := e.Campaign(context.Background(), "second")
		if err != nil {
			t.Errorf("Campaign: %v", err)
		}
		queued <- term
	}()
	waitFor(t, "the second candidate to queue", func() bool {
		st, err := e.lock.Status(context.Background())
		return err == nil && st.Waiters == 1
	})
	resigned := time.Now()
	resign(t, first)
	select {
	case term := <-queued:
		if waited := time.Since(resigned); waited > 3*time.Second {
			t.Fatalf("the next candidate led %v after Resign; want well before its 10s poll", waited)
		}
		if term.Number() <= first.Number() {
			t.Fatalf("term %d after term %d", term.Number(), first.Number())
		}
		resign(t, term)
	case <-time.After(8 * time.Second):
		t.Fatal("the next candidate did not lead within 8s of Resign")
	}
}

// observing returns the next state of an observer of e, waiting for it.
func observing(t *testing.T, ctx context.Context, e *Election) (next func(what string) Leader) {
	states := e.Observe(ctx)
	return func(what string) Leader {
		t.Helper()
		select {
		case s, open := <-states:
			if !open {
				t.Fatalf("Observe's channel closed; want %s", what)
			}
			return s
		case <-time.After(5 * time.Second):
			t.Fatalf("no state within 5s; want %s", what)
		}
		return Leader{}
	}
}

// TestElectionObserve: the states come in order, pushed: with a TTL of 60s
// the observer's quorum reads are 20s apart.
func TestElectionObserve(t *testing.T) {
	_, clients := servers(t, 3)
	opts := []Option{WithTTL(60 * time.Second)}
	e := newClient(t, clients, opts...).NewElection("obs", opts...)
	other := newClient(t, clients, opts...).NewElection("obs", opts...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	next := observing(t, ctx, newClient(t, clients, opts...).NewElection("obs", opts...))
	if s := next("no leader first"); s != (Leader{}) {
		t.Fatalf("first state %+v; want Leader{}", s)
	}
	term := campaign(t, e, "a")
	if s := next("term of a"); s.Value != "a" || s.Term != term.Number() || s.TTL <= 0 {
		t.Fatalf("state %+v; want a in term %d", s, term.Number())
	}
	if err := term.Proclaim(ctx, "b"); err != nil {
		t.Fatalf("Proclaim: %v", err)
	}
	if s := next("b proclaimed"); s.Value != "b" || s.Term != term.Number() {
		t.Fatalf("state %+v; want b in term %d", s, term.Number())
	}
	resign(t, term)
	if s := next("no leader after Resign"); s != (Leader{}) {
		t.Fatalf("state %+v; want Leader{}", s)
	}
	later := campaign(t, other, "c")
	if s := next("term of c"); s.Value != "c" || s.Term != later.Number() || s.Term <= term.Number() {
		t.Fatalf("state %+v; want c in term %d, after %d", s, later.Number(), term.Number())
	}
	resign(t, later)
	next("no leader")
}

// TestElectionObserveLapse: a term that lapses without Resign (the
// servers' clocks jump past its expiry) is reported within its TTL plus a
// node timeout, though the observer's own polls are 20s apart; its context
// ends with ErrLockLost, and the process can campaign again.
func TestElectionObserveLapse(t *testing.T) {
	mrs, clients := servers(t, 3)
	const ttl = 2 * time.Second
	opts := []Option{WithTTL(ttl)}
	e := newClient(t, clients, opts...).NewElection("lapse", opts...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	next := observing(t, ctx, newClient(t, clients).NewElection("lapse", WithTTL(time.Minute)))
	next("no leader first")
	term := campaign(t, e, "a")
	seen := next("term of a")
	if seen.Term != term.Number() {
		t.Fatalf("state %+v; want term %d", seen, term.Number())
	}
	// Each server's notice of the term wakes the observer: let it read the
	// copies after the first, so that only its timer sees the lapse.
	time.Sleep(300 * time.Millisecond)
	seenAt := time.Now()
	for _, mr := range mrs {
		mr.FastForward(ttl + time.Second)
	}
	s := next("no leader after the lapse")
	if s != (Leader{}) {
		t.Fatalf("state %+v; want Leader{}", s)
	}
	if took, bound := time.Since(seenAt), seen.TTL+e.lock.spec.nodeTimeout+time.Second; took > bound {
		t.Fatalf("lapse reported %v after the term was seen; want within %v", took, bound)
	}
	select {
	case <-term.Context().Done():
		if !errors.Is(context.Cause(term.Context()), ErrLockLost) {
			t.Fatalf("cause %v; want ErrLockLost", context.Cause(term.Context()))
		}
	case <-time.After(2 * ttl):
		t.Fatal("the lapsed term's context did not end")
	}
	if err := term.Proclaim(context.Background(), "late"); !errors.Is(err, ErrLockLost) {
		t.Fatalf("Proclaim after the lapse = %v; want ErrLockLost", err)
	}
	again := campaign(t, e, "again")
	if again.Number() <= term.Number() {
		t.Fatalf("term %d after %d", again.Number(), term.Number())
	}
	if err := term.Resign(context.Background()); !errors.Is(err, ErrLockLost) {
		t.Fatalf("Resign of the lapsed term = %v; want ErrLockLost", err)
	}
	resign(t, again)
}

// TestElectionObserveEnds: the channel closes when ctx ends, and when the
// Client closes; goleak in TestMain checks that nothing is left running.
func TestElectionObserveEnds(t *testing.T) {
	_, clients := servers(t, 3)
	c := newClient(t, clients)
	ctx, cancel := context.WithCancel(context.Background())
	states := c.NewElection("end").Observe(ctx)
	<-states
	cancel()
	select {
	case _, open := <-states:
		if open {
			t.Fatal("a state after ctx ended; want the channel closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the channel was not closed within 5s of ctx's end")
	}

	closing := newClient(t, clients)
	states = closing.NewElection("end").Observe(context.Background())
	<-states
	if err := closing.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, open := <-states; open {
		t.Fatal("a state after Close; want the channel closed")
	}
}

// TestElectionProclaimFailsWithoutQuorum: a Proclaim that reaches a
// minority fails with ErrNoQuorum and leaves the term's value.
func TestElectionProclaimFailsWithoutQuorum(t *testing.T) {
	mrs, clients := servers(t, 3)
	e := newClient(t, clients, WithNodeTimeout(200*time.Millisecond)).NewElection("p")
	term := campaign(t, e, "a")
	mrs[0].Close()
	mrs[1].Close()
	err := term.Proclaim(context.Background(), "b")
	if !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("Proclaim = %v; want ErrNoQuorum", err)
	}
	if term.Value() != "a" {
		t.Fatalf("Value() = %q after a failed Proclaim; want %q", term.Value(), "a")
	}
	for _, mr := range mrs[:2] {
		if err := mr.Restart(); err != nil {
			t.Fatalf("Restart: %v", err)
		}
	}
	_ = term.Resign(context.Background())
}

func TestObserverSendsNoStepBack(t *testing.T) {
	at := func(term, proclamation uint64, value string) reading {
		return reading{Leader{Value: value, Term: term, TTL: time.Second}, proclamation, "rl:A"}
	}
	a1 := at(5, 1, "a")
	for _, tc := range []struct {
		name    string
		state   reading
		last    reading
		sent    bool
		highest reading
		want    bool
	}{
		{"first state", reading{}, reading{}, false, reading{}, true},
		{"same state, another TTL", reading{Leader{Value: "a", Term: 5, TTL: time.Hour}, 1, "rl:A"}, a1, true, a1, false},
		{"proclaimed", at(5, 2, "b"), a1, true, a1, true},
		{"an older proclamation", a1, at(5, 2, "b"), true, at(5, 2, "b"), false},
		{"new term", at(6, 1, "a"), a1, true, a1, true},
		{"a term of the same number, another holder's", reading{Leader{Value: "q", Term: 5, TTL: time.Second}, 1, "rl:Q"}, a1, true, a1, true},
		{"no leader", reading{}, a1, true, a1, true},
		{"no leader again", reading{}, reading{}, true, a1, false},
		{"an older term", at(4, 3, "a"), a1, true, a1, false},
		{"the term again after no leader (won back by repair)", a1, reading{}, true, a1, true},
		{"an older proclamation after no leader", a1, reading{}, true, at(5, 2, "b"), false},
		{"an older term after no leader", at(4, 1, "a"), reading{}, true, a1, false},
		{"a newer term after no leader", at(7, 1, "c"), reading{}, true, a1, true},
	} {
		if got := newer(tc.state, tc.last, tc.sent, tc.highest); got != tc.want {
			t.Errorf("%s: newer(%+v, %+v, %v, %+v) = %v; want %v", tc.name, tc.state, tc.last, tc.sent, tc.highest, got, tc.want)
		}
	}
}

func TestLeaderOfReads(t *testing.T) {
	rec := func(term, proclamation uint64, holder, value string) leaderRecord {
		return parseRecord(fmtRecord(term, proclamation, holder, value))
	}
	for _, tc := range []struct {
		name  string
		reads []leaderRead
		want  Leader
		err   error
	}{
		{"no holder", []leaderRead{{}, {}}, Leader{}, ErrNoLeader},
		{"split", []leaderRead{{holder: "rl:A", record: rec(1, 1, "rl:A", "a")}, {holder: "rl:B", record: rec(2, 1, "rl:B", "b")}}, Leader{}, ErrNoLeader},
		{"a quorum", []leaderRead{
			{holder: "rl:A", record: rec(3, 1, "rl:A", "a"), ttl: 5 * time.Second},
			{holder: "rl:A", ttl: 4 * time.Second},
		}, Leader{Value: "a", Term: 3, TTL: 4 * time.Second}, nil},
		{"the latest proclamation", []leaderRead{
			{holder: "rl:A", record: rec(3, 1, "rl:A", "a"), ttl: time.Second},
			{holder: "rl:A", record: rec(3, 2, "rl:A", "b"), ttl: time.Second},
		}, Leader{Value: "b", Term: 3, TTL: time.Second}, nil},
		{"a stale record", []leaderRead{
			{holder: "rl:B", record: rec(3, 1, "rl:A", "a")},
			{holder: "rl:B", record: rec(3, 1, "rl:A", "a")},
		}, Leader{}, ErrNoLeader},
	} {
		got, err := leaderOf(tc.reads, 3)
		if got.Leader != tc.want || err != tc.err {
			t.Errorf("%s: leaderOf = %+v, %v; want %+v, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
	if r := parseRecord("garbage"); r != (leaderRecord{}) {
		t.Errorf("parseRecord(garbage) = %+v; want the zero record", r)
	}
}

// A term whose release a node refused is a leftover there, released once
// the node answers: the leader's record goes with the lock's key, or it
// would outlive the term by up to a TTL.
func TestElectionLeftoverTakesTheRecord(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 17)
	c := newClient(t, clients, WithTTL(10*time.Second))
	e := c.NewElection("leftover")
	term := campaign(t, e, "a")
	// Campaign returns at a quorum: with a grant still in flight, the
	// failed release would leave Resign without one.
	waitFor(t, "all grants", func() bool { return keysOn(mrs, e.lock.key) == 3 })
	settle(t, c.nodes)
	hooks[0].add(&fault{match: isKind("release"), fail: errors.New("LOADING simulated"), times: 1})
	resign(t, term)
	settle(t, c.nodes)
	record := e.lock.key + recordSuffix
	waitFor(t, "the leftover released on node 0", func() bool { return !mrs[0].Exists(e.lock.key) })
	if mrs[0].Exists(record) {
		t.Errorf("node 0 still has the leader's record (TTL %v) after the term's leftover was released there", mrs[0].TTL(record))
	}
	if n := len(hooks[0].sent(isKind("forget"))); n == 0 {
		t.Errorf("no leftover release was sent to node 0; the test did not test it")
	}
}

// (Found by the review of the Election.) A node whose read fails is not
// one that does not hold the term: Leader must not say that nobody leads
// while the nodes it could not read may hold the term. And an observer that
// saw nobody lead, rightly or not, sends the term again once a quorum holds
// it, with its proclamations. The term holds nodes 0 and 1; the candidate
// never reached node 2, and the observer's Client fails on node 1 for a
// moment.
func TestElectionObserverRecoversFromAnUnknownRead(t *testing.T) {
	mrs, _ := servers(t, 3)
	opts := []Option{WithTTL(60 * time.Second)}
	candCut := &cutOff{}
	cand := newClient(t, clientsToEach(t, mrs, []redis.Hook{nil, nil, candCut}), opts...).NewElection("stuck", opts...)
	obsCut := &cutOff{}
	obs := newClient(t, clientsToEach(t, mrs, []redis.Hook{nil, obsCut, nil}), opts...).NewElection("stuck", opts...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := obs.Observe(ctx)
	recv := func(d time.Duration) (Leader, bool) {
		select {
		case s := <-states:
			return s, true
		case <-time.After(d):
			return Leader{}, false
		}
	}
	if s, _ := recv(5 * time.Second); s != (Leader{}) {
		t.Fatalf("first %+v", s)
	}
	candCut.on.Store(true) // node 2 does not answer the candidate
	term := campaign(t, cand, "a")
	candCut.on.Store(false)
	for {
		s, ok := recv(5 * time.Second)
		if !ok {
			t.Fatal("observer did not show the term")
		}
		if s.Term == term.Number() {
			break
		}
	}

	obsCut.on.Store(true) // node 1 fails the observer's reads for a moment
	if got, err := obs.Leader(context.Background()); err == nil || errors.Is(err, ErrNoLeader) {
		t.Errorf("Leader() with node 1 failing (2 of 3 answered) = %+v, %v; want node 1's error: term %d is live, held on nodes 0 and 1", got, err, term.Number())
	}
	mrs[0].Publish(obs.channel, "0") // any notice: the observer reads
	if s, ok := recv(500 * time.Millisecond); ok {
		t.Logf("observer sent %+v while term %d is live (context err %v)", s, term.Number(), term.Context().Err())
	}
	obsCut.on.Store(false)

	if err := term.Proclaim(context.Background(), "b"); err != nil {
		t.Fatalf("Proclaim: %v", err)
	}
	if l, err := obs.Leader(context.Background()); err != nil || l.Value != "b" {
		t.Fatalf("Leader after Proclaim = %+v, %v", l, err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		s, ok := recv(100 * time.Millisecond)
		if ok && s.Value == "b" && s.Term == term.Number() {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("Proclaim(b) returned nil and Leader() reads b, but the observer has not sent b within 3s (term %d still live: %v)", term.Number(), term.Context().Err() == nil)
			break
		}
		mrs[0].Publish(obs.channel, "0") // and more notices
	}
	resign(t, term)
}

// (Found by the review of the Election.) A Proclaim that a quorum refuses
// says the term has ended, so its context ends too: else another candidate
// could lead while it is still live. The masters lose the term here by a
// jump of their clocks past its TTL.
func TestElectionProclaimRefusedEndsTheTerm(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithTTL(60 * time.Second)}
	a := newClient(t, clients, opts...).NewElection("p", opts...)
	b := newClient(t, clients, opts...).NewElection("p", opts...)
	term := campaign(t, a, "a")
	// The masters lose the term (clock jump / restart without persistence).
	for _, mr := range mrs {
		mr.FastForward(61 * time.Second)
	}
	err := term.Proclaim(context.Background(), "b")
	if !errors.Is(err, ErrLockLost) {
		t.Fatalf("Proclaim = %v; want ErrLockLost", err)
	}
	if term.Context().Err() == nil {
		t.Errorf("Proclaim returned %q, but the Term's context is still live", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	other, err := b.Campaign(ctx, "b")
	if err != nil {
		t.Fatalf("second Campaign: %v", err)
	}
	if term.Context().Err() == nil && other.Context().Err() == nil {
		t.Errorf("two live terms at once: %d and %d", term.Number(), other.Number())
	}
	_ = other.Resign(context.Background())
	_ = term.Resign(context.Background())
}

// cutOff is a go-redis hook that fails every command while on is set.
type cutOff struct{ on atomic.Bool }

func (c *cutOff) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *cutOff) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if c.on.Load() {
			cmd.SetErr(errors.New("cut off"))
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}

func (c *cutOff) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// clientsToEach returns new go-redis clients of mrs, each with its hook of
// hooks if not nil.
func clientsToEach(t *testing.T, mrs []*miniredis.Miniredis, hooks []redis.Hook) []redis.UniversalClient {
	t.Helper()
	var out []redis.UniversalClient
	for i, mr := range mrs {
		rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true, MaxRetries: -1})
		if hooks[i] != nil {
			rc.AddHook(hooks[i])
		}
		t.Cleanup(func() { rc.Close() })
		out = append(out, rc)
	}
	return out
}

// (Found by the schedules, seed 119099848468193.) A Proclaim that has
// reached one master is read by a quorum that holds that master and not by
// another; an observer must not send the older value after the newer one.
func TestElectionObserverSendsNoOlderProclamation(t *testing.T) {
	mrs, _ := servers(t, 3)
	opts := []Option{WithTTL(60 * time.Second)}
	candCut := &cutOff{}
	cand := newClient(t, clientsToEach(t, mrs, []redis.Hook{nil, candCut, candCut}), opts...).NewElection("p", opts...)
	obsCut := &cutOff{}
	obs := newClient(t, clientsToEach(t, mrs, []redis.Hook{obsCut, nil, nil}), opts...).NewElection("p", opts...)
	term := campaign(t, cand, "a")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := obs.Observe(ctx)
	// recvUntil receives until value, publishing notices while it waits,
	// and returns what came before it.
	recvUntil := func(value string) []Leader {
		t.Helper()
		var before []Leader
		deadline := time.After(5 * time.Second)
		for {
			select {
			case s := <-states:
				if s.Term == term.Number() && s.Value == value {
					return before
				}
				before = append(before, s)
			case <-time.After(20 * time.Millisecond):
				mrs[1].Publish(obs.channel, "0")
			case <-deadline:
				t.Fatalf("the observer did not send %q in 5s; it sent %+v", value, before)
			}
		}
	}
	recvUntil("a")

	candCut.on.Store(true) // the Proclaim reaches master 0 only
	if err := term.Proclaim(context.Background(), "b"); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("Proclaim(b) with masters 1 and 2 cut off = %v; want ErrNoQuorum", err)
	}
	candCut.on.Store(false)
	recvUntil("b") // read from a quorum with master 0

	obsCut.on.Store(true) // now quorums without master 0, which read a
	for range 5 {
		mrs[1].Publish(obs.channel, "0")
		time.Sleep(20 * time.Millisecond)
	}
	if err := term.Proclaim(context.Background(), "c"); err != nil {
		t.Fatalf("Proclaim(c): %v", err)
	}
	for _, s := range recvUntil("c") {
		if s.Term == term.Number() {
			t.Errorf("after %q the observer sent %+v of the same term, an older proclamation", "b", s)
		}
	}
	resign(t, term)
}

// A master that lost the term (restarted without persistence) gets the
// leader's record back with the lock's key when the watchdog repairs it:
// else, once a quorum of masters were repaired, readers would find the
// lock held and no record, and say that nobody leads during a live term.
func TestElectionRepairPutsTheRecordBack(t *testing.T) {
	mrs, _ := servers(t, 3)
	opts := []Option{WithTTL(3 * time.Second)}
	cand := newClient(t, clientsToEach(t, mrs, []redis.Hook{nil, nil, nil}), opts...).NewElection("r", opts...)
	readCut := &cutOff{}
	reader := newClient(t, clientsToEach(t, mrs, []redis.Hook{nil, nil, readCut}), opts...).NewElection("r", opts...)
	term := campaign(t, cand, "a")
	if err := term.Proclaim(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	key, record := cand.lock.key, cand.lock.key+recordSuffix
	for _, i := range []int{0, 1} { // a quorum restarts, one after the other
		mrs[i].Del(key)
		mrs[i].Del(record)
		waitFor(t, "the repair of master "+strconv.Itoa(i), func() bool { return mrs[i].Exists(key) })
		waitFor(t, "the record of master "+strconv.Itoa(i), func() bool { return mrs[i].Exists(record) })
	}
	readCut.on.Store(true) // the reader hears masters 0 and 1 only
	got, err := reader.Leader(context.Background())
	if err != nil || got.Value != "b" || got.Term != term.Number() {
		t.Errorf("Leader from the repaired masters = %+v, %v; want %q in term %d", got, err, "b", term.Number())
	}
	readCut.on.Store(false)
	resign(t, term)
}

// A repair's record can land after a later Proclaim on the same master:
// the master keeps the later proclamation.
func TestElectionRecordKeepsTheLaterProclamation(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	e := c.NewElection("k")
	term := campaign(t, e, "a")
	if err := term.Proclaim(context.Background(), "b"); err != nil { // proclamation 2
		t.Fatal(err)
	}
	stale := e.record(term.l.value, term.Number(), 1, "a")
	if rep := stale(context.Background(), c.nodes[0], nil); !rep.ok {
		t.Fatalf("the stale record's call: %+v", rep)
	}
	got := parseRecord(mustGet(t, mrs[0], e.lock.key+recordSuffix))
	if got.proclamation != 2 || got.value != "b" {
		t.Errorf("master 0's record after an older proclamation landed = %+v; want proclamation 2, %q", got, "b")
	}
	resign(t, term)
}

func mustGet(t *testing.T, mr *miniredis.Miniredis, key string) string {
	t.Helper()
	v, err := mr.Get(key)
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	return v
}

// (Found by the review.) WithMaxHold ends a term's context, but, as for a
// Mutex, the masters keep the term until its validity ends, so that a
// leader that checks its context between steps has the rest of the
// validity to stop: no other candidate leads before then.
func TestElectionMaxHoldKeepsTheTerm(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithTTL(10 * time.Second), WithMaxHold(300 * time.Millisecond)}
	e := newClient(t, clients, opts...).NewElection("m", opts...)
	term := campaign(t, e, "a")
	<-term.Context().Done()
	if !errors.Is(context.Cause(term.Context()), ErrLockLost) {
		t.Fatalf("term ended with %v", context.Cause(term.Context()))
	}
	time.Sleep(100 * time.Millisecond)
	if n := keysOn(mrs, e.lock.key); n != 3 {
		t.Errorf("the term's key is on %d of 3 masters 100ms after its maximum hold; want 3 until its validity ends", n)
	}
	other := newClient(t, clients).NewElection("m")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if t2, err := other.Campaign(ctx, "b"); err == nil {
		t.Errorf("another candidate led (term %d) within term %d's validity, after its maximum hold", t2.Number(), term.Number())
		_ = t2.Resign(context.Background())
	}
}

// (Found by the review.) A term that lapses in a live process is pushed to
// the observers as no leader, as Resign is, not left to their next poll.
// It passed before the lapse's own announcement too (a refused term is
// seen some other way): it guards the outcome, not that announcement.
func TestElectionLapseIsPushed(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithTTL(30 * time.Second)} // observers poll every 10s
	e := newClient(t, clients, opts...).NewElection("p", opts...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := newClient(t, clients, opts...).NewElection("p", opts...).Observe(ctx)
	<-states
	term := campaign(t, e, "a")
	for s := range states {
		if s.Term == term.Number() {
			break
		}
	}
	for _, mr := range mrs {
		mr.FastForward(31 * time.Second) // the masters lose the term
	}
	if err := term.Proclaim(context.Background(), "b"); !errors.Is(err, ErrLockLost) {
		t.Fatalf("Proclaim = %v; want ErrLockLost", err)
	}
	select {
	case s := <-states:
		if s != (Leader{}) {
			t.Errorf("observer sent %+v after the term lapsed; want no leader", s)
		}
	case <-time.After(4 * time.Second):
		t.Errorf("no report within 4s of a lapse (observers poll every 10s)")
	}
}

// Resign of a term kept past its maximum hold releases it at once, and
// leaves nothing of the term's running.
func TestElectionResignAfterMaxHold(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithTTL(10 * time.Second), WithMaxHold(200 * time.Millisecond)}
	e := newClient(t, clients, opts...).NewElection("mr", opts...)
	term := campaign(t, e, "a")
	<-term.Context().Done()
	if err := term.Resign(context.Background()); !errors.Is(err, ErrLockLost) {
		t.Errorf("Resign after the maximum hold = %v; want ErrLockLost", err)
	}
	waitFor(t, "the term's keys to go", func() bool { return keysOn(mrs, e.lock.key) == 0 })
	next := campaign(t, e, "b")
	resign(t, next)
}

// (Found by the review.) A quorum that answers but disagrees, with the
// other nodes failed, cannot tell whether the term leads: Leader says so,
// not that fewer than a quorum answered.
func TestElectionLeaderUndecidedSaysWhy(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithTTL(60 * time.Second), WithNodeTimeout(200 * time.Millisecond)}
	term := campaign(t, newClient(t, clients, opts...).NewElection("q", opts...), "a")
	mrs[0].FlushAll() // master 0 restarted empty
	cut := &cutOff{}
	r := newClient(t, clientsToEach(t, mrs, []redis.Hook{nil, nil, cut}), opts...).NewElection("q", opts...)
	cut.on.Store(true) // master 2, which holds the term, fails the reader
	_, err := r.Leader(context.Background())
	if err == nil || errors.Is(err, ErrNoLeader) || strings.Contains(err.Error(), "fewer than a quorum") || !strings.Contains(err.Error(), "do not agree") {
		t.Errorf("Leader with masters 0 (free) and 1 (term %d) answering and 2 failed = %v; want an error saying they disagree", term.Number(), err)
	}
	cut.on.Store(false)
	resign(t, term)
}
