package redlock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// reviewHook is a go-redis hook with rules: for the commands a rule's
// match selects, it fails them, or holds them until open is closed (telling
// entered when one is held), or delays them.
type reviewHook struct {
	mu      sync.Mutex
	rules   []reviewRule
	open    chan struct{}
	entered chan struct{}
}

type reviewRule struct {
	match      func(cmd redis.Cmder) bool
	fail, gate bool
	delay      time.Duration
}

func newReviewHook() *reviewHook {
	return &reviewHook{open: make(chan struct{}), entered: make(chan struct{}, 16)}
}

// set replaces every rule with this one; a nil match clears them.
func (h *reviewHook) set(match func(cmd redis.Cmder) bool, fail, gate bool, delay time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rules = nil
	if match != nil {
		h.rules = []reviewRule{{match, fail, gate, delay}}
	}
}

// add adds a rule.
func (h *reviewHook) add(match func(cmd redis.Cmder) bool, fail, gate bool, delay time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rules = append(h.rules, reviewRule{match, fail, gate, delay})
}

func (h *reviewHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *reviewHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *reviewHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		rules, open := h.rules, h.open
		h.mu.Unlock()
	rules:
		for _, r := range rules {
			if !r.match(cmd) {
				continue
			}
			switch {
			case r.fail:
				cmd.SetErr(errors.New("review: cut off"))
				return cmd.Err()
			case r.gate:
				select {
				case h.entered <- struct{}{}:
				default:
				}
				select {
				case <-open:
				case <-ctx.Done():
					cmd.SetErr(ctx.Err())
					return ctx.Err()
				}
			case r.delay > 0:
				time.Sleep(r.delay)
			}
			break rules
		}
		return next(ctx, cmd)
	}
}

// isScript matches runs of the library's script of that kind.
func isScript(kind string) func(cmd redis.Cmder) bool {
	return func(cmd redis.Cmder) bool {
		args := cmd.Args()
		name := strings.ToLower(cmd.Name())
		return (name == "evalsha" || name == "eval") && len(args) > 1 && scriptKind(fmt.Sprint(args[1])) == kind
	}
}

// isSetNX matches SET ... NX (a repair, once the term is held).
func isSetNX(cmd redis.Cmder) bool {
	args := cmd.Args()
	return strings.ToLower(cmd.Name()) == "set" && len(args) > 3 && strings.EqualFold(fmt.Sprint(args[len(args)-1]), "nx")
}

func hooksOf(hs ...*reviewHook) []redis.Hook {
	out := make([]redis.Hook, len(hs))
	for i, h := range hs {
		if h != nil {
			out[i] = h
		}
	}
	return out
}

// recv waits up to d for the next state; ok false if none came.
func recv(states <-chan Leader, d time.Duration) (Leader, bool) {
	select {
	case s, open := <-states:
		return s, open
	case <-time.After(d):
		return Leader{}, false
	}
}

// recvWhere receives, publishing a notice on mr every 20ms to wake the
// observer, until a state satisfies cond, for up to d.
func recvWhere(t *testing.T, states <-chan Leader, mr *miniredis.Miniredis, channel string, d time.Duration, what string, cond func(Leader) bool) Leader {
	t.Helper()
	deadline := time.After(d)
	var seen []Leader
	for {
		select {
		case s := <-states:
			if cond(s) {
				return s
			}
			seen = append(seen, s)
		case <-time.After(20 * time.Millisecond):
			mr.Publish(channel, "0")
		case <-deadline:
			t.Fatalf("observer did not send %s within %v; sent %+v", what, d, seen)
		}
	}
}

// A Campaign's attempt that failed its record round may leave its keys on
// a quorum and its record on one master, which a reader sees as a term
// until the attempt's release, and a later Campaign may take the same term
// number (the failed round raised one master's counter only). An observer
// that sent the failed attempt must send the later, real term, whose
// number and proclamation are the same but whose holder is not. (Failed
// first: the observer kept the failed attempt for the whole term.)
func TestElectionObserverSeesATermNumberedAsAFailedAttempt(t *testing.T) {
	mrs, _ := servers(t, 3)
	opts := []Option{WithTTL(10 * time.Second), WithNodeTimeout(3 * time.Second)}
	// Q: its records fail on masters 1 and 2; its releases are held back.
	q0, q1, q2 := newReviewHook(), newReviewHook(), newReviewHook()
	qc := newClient(t, clientsToEach(t, mrs, hooksOf(q0, q1, q2)), opts...)
	q := qc.NewElection("same", opts...)
	// R: its grant to master 0 is slow.
	r0 := newReviewHook()
	r := newClient(t, clientsToEach(t, mrs, hooksOf(r0, nil, nil)), opts...).NewElection("same", opts...)
	obsOpts := []Option{WithTTL(60 * time.Second)} // polls 20s apart
	obs := newClient(t, clientsToEach(t, mrs, hooksOf(nil, nil, nil)), obsOpts...).NewElection("same", obsOpts...)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	states := obs.Observe(ctx)
	if s, ok := recv(states, 5*time.Second); !ok || s != (Leader{}) {
		t.Fatalf("first state %+v, %v; want Leader{}", s, ok)
	}

	for _, h := range []*reviewHook{q1, q2} {
		h.set(isScript("elect"), true, false, 0)
	}
	q0.add(isScript("release"), false, true, 0)
	q1.add(isScript("release"), false, true, 0)
	q2.add(isScript("release"), false, true, 0)
	// One attempt of Q's Campaign: granted everywhere, recorded on master 0
	// only, so it fails (as a Campaign whose ctx then ends would).
	_, _, err := q.lock.attemptFenced(ctx, ctx, "", func(holder string, term uint64) nodeCall[none] {
		return q.record(holder, term, 1, "Q")
	})
	if err == nil {
		t.Fatal("Q's attempt succeeded; want it to fail its record round")
	}
	// Leader's doc: a reader may see a failed attempt's term until its
	// release.
	sq := recvWhere(t, states, mrs[0], obs.channel, 5*time.Second, "Q's record", func(s Leader) bool { return s.Value == "Q" })
	t.Logf("observer sent %+v (Q's failed attempt)", sq)
	for _, h := range []*reviewHook{q0, q1, q2} {
		close(h.open) // Q's releases go through
	}
	waitFor(t, "Q's keys to go", func() bool { return keysOn(mrs, q.lock.key) == 0 })

	r0.set(isScript("acquire"), false, false, 300*time.Millisecond)
	term := campaign(t, r, "R")
	t.Logf("R leads in term %d", term.Number())
	got := leaderIs(t, obs, "R", term.Number())
	recvWhere(t, states, mrs[1], obs.channel, 3*time.Second, fmt.Sprintf("R's term (Leader() = %+v; sent before: %+v)", got, sq),
		func(s Leader) bool { return s.Value == "R" })
	resign(t, term)
}

// A term whose masters lost it for a while (the observer sent Leader{})
// and that repairs win back is sent again, though a failed Proclaim's value
// had been sent before: repairs carry the latest proclamation, failed or
// not, so that its value does not go back. (Before: repairs wrote the last
// successful one, lower than the observer's highest, and the observer kept
// saying no leader.) Master 1 is repaired slowly while master 2 restarts.
func TestElectionObserverSeesARepairedTermAgain(t *testing.T) {
	mrs, _ := servers(t, 3)
	opts := []Option{WithTTL(9 * time.Second), WithNodeTimeout(2 * time.Second)}
	h0, h1, h2 := newReviewHook(), newReviewHook(), newReviewHook()
	cand := newClient(t, clientsToEach(t, mrs, hooksOf(h0, h1, h2)), opts...).NewElection("st", opts...)
	obsOpts := []Option{WithTTL(60 * time.Second)}
	obs := newClient(t, clientsToEach(t, mrs, hooksOf(nil, nil, nil)), obsOpts...).NewElection("st", obsOpts...)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	term := campaign(t, cand, "a")
	states := obs.Observe(ctx)
	recvWhere(t, states, mrs[0], obs.channel, 5*time.Second, "a", func(s Leader) bool { return s.Value == "a" })

	// Proclaim b reaches master 2 only.
	h0.set(isScript("elect"), true, false, 0)
	h1.set(isScript("elect"), true, false, 0)
	if err := term.Proclaim(ctx, "b"); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("Proclaim(b) = %v; want ErrNoQuorum", err)
	}
	h0.set(nil, false, false, 0)
	recvWhere(t, states, mrs[0], obs.channel, 5*time.Second, "b", func(s Leader) bool { return s.Value == "b" })

	key, record := cand.lock.key, cand.lock.key+recordSuffix
	// Master 1 restarts; its repair is slow.
	h1.set(isSetNX, false, true, 0)
	mrs[1].Del(key)
	mrs[1].Del(record)
	select {
	case <-h1.entered:
	case <-time.After(10 * time.Second): // two extension rounds, 3s apart, and slack
		t.Fatal("no repair of master 1")
	}
	// Master 2 restarts meanwhile: the observer sees nobody lead.
	mrs[2].Del(key)
	mrs[2].Del(record)
	recvWhere(t, states, mrs[0], obs.channel, time.Second, "no leader", func(s Leader) bool { return s == (Leader{}) })
	close(h1.open) // the repair of master 1 lands
	for until := time.Now().Add(10 * time.Second); !(mrs[2].Exists(key) && mrs[1].Exists(record) && mrs[2].Exists(record)); {
		if term.Context().Err() != nil {
			t.Fatalf("term lost (the test's choreography failed, not the finding): %v", context.Cause(term.Context()))
		}
		if time.Now().After(until) {
			t.Fatal("masters 1 and 2 not repaired within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := leaderIs(t, obs, "b", term.Number()) // the failed Proclaim's value, which repairs carry
	recvWhere(t, states, mrs[0], obs.channel, 3*time.Second, fmt.Sprintf("the term repaired on every master (Leader() = %+v) after Leader{}", got),
		func(s Leader) bool { return s.Term == term.Number() })
	resign(t, term)
}

// Close while a term past its maximum hold is kept on the masters returns
// at once, releases the term and leaves nothing behind.
func TestElectionCloseWhileAMaxHoldTermIsKept(t *testing.T) {
	mrs, clients := servers(t, 3)
	opts := []Option{WithTTL(20 * time.Second), WithMaxHold(200 * time.Millisecond)}
	c, err := New(clients, opts...)
	if err != nil {
		t.Fatal(err)
	}
	e := c.NewElection("mc", opts...)
	term := campaign(t, e, "a")
	<-term.Context().Done()
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %v", took)
	}
	if n := keysOn(mrs, e.lock.key); n != 0 {
		t.Errorf("key left on %d masters after Close", n)
	}
	if err := term.Resign(context.Background()); !errors.Is(err, ErrLockLost) && !errors.Is(err, ErrClosed) {
		t.Errorf("Resign after Close = %v", err)
	}
}

// x's Campaign is refused by nodes 1 and 2 at once; its grant on node 0
// lands after h resigned, when node 0 is free, and is undone. x lost to a
// holder: its undo must wake nobody, or two candidates race for one Resign
// and w, first in line, loses its place to v and then to x. (Failed first
// when every undo woke the next waiter.)
func TestElectionUndoOfARefusedAttemptWakesNobody(t *testing.T) {
	mrs, clients := servers(t, 3)
	hc := newClient(t, clients)
	h := hc.NewElection("zz-fifo")
	term, err := h.Campaign(t.Context(), "h")
	if err != nil {
		t.Fatal(err)
	}
	queue := h.lock.key + queueSuffix
	queuedAll := func(c *Client) func() bool {
		return func() bool {
			return queuedOn(mrs[0], queue, c) && queuedOn(mrs[1], queue, c) && queuedOn(mrs[2], queue, c)
		}
	}
	wown, whooks := hookedClients(t, mrs)
	wc := newClient(t, wown, WithRetryDelay(2*time.Second), WithRetryJitter(0))
	type result struct {
		who string
		t   *Term
		err error
	}
	results := make(chan result, 2)
	go func() {
		tm, err := wc.NewElection("zz-fifo").Campaign(t.Context(), "w")
		results <- result{"w", tm, err}
	}()
	waitFor(t, "w to queue", queuedAll(wc))
	vc := newClient(t, clients, WithRetryDelay(2*time.Second), WithRetryJitter(0))
	go func() {
		tm, err := vc.NewElection("zz-fifo").Campaign(t.Context(), "v")
		results <- result{"v", tm, err}
	}()
	waitFor(t, "v to queue", queuedAll(vc))
	settle(t, wc.nodes)
	settle(t, vc.nodes)
	xown, xhooks := hookedClients(t, mrs)
	xc := newClient(t, xown, WithRetryDelay(2*time.Second), WithRetryJitter(0), WithNodeTimeout(time.Second))
	warm(t, xc)
	xhooks[0].add(&fault{match: isKind("acquire"), before: 200 * time.Millisecond, times: 1})
	for _, hk := range whooks {
		hk.add(&fault{match: isKind("acquire"), before: 300 * time.Millisecond, times: 1})
	}
	xctx, xcancel := context.WithCancel(t.Context())
	defer xcancel()
	xdone := async(func() error { _, err := xc.NewElection("zz-fifo").Campaign(xctx, "x"); return err })
	waitFor(t, "x's refusals on nodes 1 and 2", func() bool {
		return len(xhooks[1].sent(isKind("acquire"))) >= 2 && len(xhooks[2].sent(isKind("acquire"))) >= 2
	})
	time.Sleep(20 * time.Millisecond)
	if err := term.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	var first result
	select {
	case first = <-results:
	case <-time.After(5 * time.Second):
		t.Fatal("nobody led")
	}
	if first.err != nil {
		t.Fatal(first.err)
	}
	if first.who != "w" {
		t.Errorf("%s led first after h resigned; want w, which queued first (x's failed attempt never held the lock)", first.who)
	}
	first.t.Resign(t.Context())
	time.Sleep(500 * time.Millisecond)
	next, err := h.Leader(t.Context())
	t.Logf("after %s resigned: Leader() = %+v, %v", first.who, next, err)
	if next.Value == "x" {
		t.Errorf("x, which queued after w and v, leads before w: w's place went with the wake-up v took")
		xc.Close() // x's term; its Campaign ctx does not end it
	}
	select {
	case second := <-results:
		if second.err == nil {
			second.t.Resign(t.Context())
		}
	case <-time.After(500 * time.Millisecond):
	}
	xcancel()
	<-xdone
}

// A stray key of a failed candidate on node 0, where the term lost its
// record, must not make Leader say "no leader" while nodes 1 and 2, a
// quorum, hold the term and its record.
func TestElectionLeaderDuringALiveTermWithAStrayKey(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 43)
	c := newClient(t, clients, WithNodeTimeout(time.Second))
	e := c.NewElection("zz-live")
	term, err := e.Campaign(t.Context(), "leader")
	if err != nil {
		t.Fatal(err)
	}
	defer term.Resign(context.Background())
	record := e.lock.key + recordSuffix
	waitFor(t, "the term's keys", func() bool { return keysOn(mrs, e.lock.key) == 3 })
	settle(t, c.nodes)
	// A grant that came after the quorum has no record round: put the
	// record on nodes 1 and 2, as a term recorded everywhere has it.
	var text string
	for _, mr := range mrs {
		if v, err := mr.Get(record); err == nil {
			text = v
		}
	}
	for _, mr := range mrs[1:] {
		mr.Set(record, text)
		mr.SetTTL(record, 8*time.Second)
	}
	// Node 0 lost the term's key and record; a candidate that died took
	// the key there in an attempt that failed on nodes 1 and 2.
	mrs[0].Del(record)
	mrs[0].Set(e.lock.key, valuePrefix+"CRASHEDCANDIDATE")
	mrs[0].SetTTL(e.lock.key, 8*time.Second)
	hooks[1].add(&fault{match: isKind("leader"), before: 50 * time.Millisecond})
	hooks[2].add(&fault{match: isKind("leader"), before: 200 * time.Millisecond})
	for i := range 3 {
		st, err := e.Leader(t.Context())
		if term.Context().Err() != nil {
			t.Fatalf("the term ended: %v", context.Cause(term.Context()))
		}
		if err != nil || st.Term != term.Number() {
			t.Errorf("read %d: Leader() = %+v, %v while term %d is held with its record on nodes 1 and 2, a quorum", i, st, err, term.Number())
		}
	}
}

// The term's record call failed once on node 1, so only nodes 0 and 2 have
// the record; with node 2 down, nodes 0 and 1 still hold the term's key,
// and Leader must report the term.
func TestElectionLeaderWithARecordMissingAndANodeDown(t *testing.T) {
	mrs, clients, hooks := faultyServers(t, 3, 47)
	c := newClient(t, clients, WithNodeTimeout(300*time.Millisecond))
	warm(t, c)
	e := c.NewElection("zz-minority")
	hooks[1].add(&fault{match: isKind("elect"), fail: errors.New("zz: connection reset"), times: 1})
	term, err := e.Campaign(t.Context(), "leader")
	if err != nil {
		t.Fatal(err)
	}
	defer term.Resign(context.Background())
	settle(t, c.nodes)
	if mrs[1].Exists(e.lock.key+recordSuffix) || !mrs[1].Exists(e.lock.key) {
		t.Fatal("setup: node 1 should hold the key without the record")
	}
	st, err := e.Leader(t.Context())
	if err != nil || st.Term != term.Number() {
		t.Fatalf("all up: Leader() = %+v, %v", st, err)
	}
	// Node 2 goes down: it answers nothing within the node timeout.
	hooks[2].add(&fault{match: isKind("leader"), before: time.Second})
	for i := range 2 {
		st, err := e.Leader(t.Context())
		if term.Context().Err() != nil {
			t.Fatalf("the term ended: %v", context.Cause(term.Context()))
		}
		if err != nil || st.Term != term.Number() {
			t.Errorf("read %d with node 2 down: Leader() = %+v, %v; want term %d: nodes 0 and 1, a quorum, answered and both hold it", i, st, err, term.Number())
		}
	}
}
