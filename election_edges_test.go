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
// a quorum and its record on one master, and a later Campaign may take the
// same term number (the failed round raised one master's counter only).
// Neither Leader nor an observer may report the failed attempt as a
// leader, and the observer must send the later, real term. (Before: the
// observer sent the failed attempt and then never the real term, whose
// number and proclamation were the same.)
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
	if got, err := q.Leader(ctx); !errors.Is(err, ErrNoLeader) {
		t.Errorf("Leader() = %+v, %v with Q's failed attempt on the masters; want ErrNoLeader", got, err)
	}
	for range 6 {
		mrs[0].Publish(obs.channel, "0")
		if s, ok := recv(states, 50*time.Millisecond); ok {
			t.Errorf("observer sent %+v during Q's failed attempt; want nothing", s)
		}
	}
	for _, h := range []*reviewHook{q0, q1, q2} {
		close(h.open) // Q's releases go through
	}
	waitFor(t, "Q's keys to go", func() bool { return keysOn(mrs, q.lock.key) == 0 })

	r0.set(isScript("acquire"), false, false, 300*time.Millisecond)
	term := campaign(t, r, "R")
	t.Logf("R leads in term %d", term.Number())
	got := leaderIs(t, obs, "R", term.Number())
	deadline := time.After(3 * time.Second)
	for {
		select {
		case s := <-states:
			if s.Value == "R" {
				resign(t, term)
				return
			}
			t.Logf("observer sent %+v", s)
		case <-time.After(50 * time.Millisecond):
			mrs[1].Publish(obs.channel, "0")
		case <-deadline:
			t.Fatalf("Leader() = %+v, but the observer sent nothing of R's term (number %d) after 3s of notices", got, term.Number())
		}
	}
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
	case <-time.After(6 * time.Second):
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
	deadline := time.After(3 * time.Second)
	for {
		select {
		case s := <-states:
			if s.Term == term.Number() {
				resign(t, term)
				return
			}
			t.Logf("observer sent %+v", s)
		case <-time.After(50 * time.Millisecond):
			mrs[0].Publish(obs.channel, "0")
		case <-deadline:
			t.Fatalf("Leader() = %+v (term repaired on every master), but the observer's last state is Leader{} after 3s of notices", got)
		}
	}
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
