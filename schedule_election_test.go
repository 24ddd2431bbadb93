package redlock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// scheduleElection is the name of a schedule's Elections.
const scheduleElection = "schedelect"

// electionRun is what a schedule's Elections did and what their observers
// saw, for checks (i) and (j).
type electionRun struct {
	e       *Election // one of the candidates' Elections, for its keys
	watcher *Client   // the observers', which no fault closes
	cancel  context.CancelFunc
	done    sync.WaitGroup // the observers

	mu sync.Mutex
	// values are, by term number, the values the term's leader campaigned
	// with and then tried to proclaim, in order, and whether each took
	// (the campaign's value always did). Terms that Campaign lost as it
	// won them are here too, from the Observer's events: their records
	// may have reached the masters.
	values    map[uint64][]attempt
	observers [][]seen
	// phantoms counts the states observers saw of terms that no Campaign
	// returned, nor lost as it won them.
	phantoms int
	// final is the election's state once every candidate's Client has
	// closed, as the masters hold it: nobody leads, or a term that a
	// Close could not release, which the stopped clocks keep.
	final Leader
}

// attempt is a value a leader campaigned with or proclaimed.
type attempt struct {
	value string
	ok    bool
}

// seen is a state an observer received, and when.
type seen struct {
	Leader
	at time.Time
}

// campaignValue is the context key under which a schedule's Campaign
// carries its value, so that the Observer's Acquired event names it.
type campaignValue struct{}

// startElections starts, if the seed draws them, candidates on every
// Client, each campaigning in a loop, and one or two observers on a Client
// of their own.
func (s *schedule) startElections(seed uint64, stop context.Context, workers *sync.WaitGroup) {
	rng := rand.New(rand.NewPCG(seed, 0xe1ec))
	if rng.IntN(4) == 0 && !everySchedule("REDLOCK_SCHEDULE_ELECTIONS") {
		return
	}
	run := &electionRun{values: make(map[uint64][]attempt)}
	s.election = run
	s.observed.election.Store(run)
	candidates := 0
	for ci, c := range s.clients {
		for ei := range 1 + rng.IntN(2) {
			e := c.NewElection(scheduleElection)
			run.e = e
			wrng := rand.New(rand.NewPCG(seed, uint64(900+10*ci+ei)))
			workers.Go(func() { s.campaign(fmt.Sprintf("c%d.e%d", ci, ei), e, wrng, stop) })
			candidates++
		}
	}
	universal := make([]redis.UniversalClient, len(s.rcs))
	for i, rc := range s.rcs {
		universal[i] = rc
	}
	watcher, err := New(universal, s.opts...)
	if err != nil {
		panic(err)
	}
	run.watcher = watcher
	ctx, cancel := context.WithCancel(context.Background())
	run.cancel = cancel
	observers := 1 + rng.IntN(2)
	run.observers = make([][]seen, observers)
	for i := range observers {
		states := watcher.NewElection(scheduleElection).Observe(ctx)
		run.done.Go(func() {
			for state := range states {
				run.mu.Lock()
				run.observers[i] = append(run.observers[i], seen{state, time.Now()})
				run.mu.Unlock()
				s.logf("observer %d: term %d %q", i, state.Term, state.Value)
			}
		})
	}
	s.logf("%d candidates, %d observers", candidates, observers)
}

// termAcquired records, from the Observer, a term that Campaign won, even
// one it lost as it won and did not return.
func (r *electionRun) termAcquired(ev AcquiredEvent) {
	value, _ := ev.Context.Value(campaignValue{}).(string)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.values[ev.Token]; !ok {
		r.values[ev.Token] = []attempt{{value, true}}
	}
}

// proclaiming records a Proclaim about to be made in term, and returns a
// func that records whether it took.
func (r *electionRun) proclaiming(term uint64, value string) func(ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.values[term] = append(r.values[term], attempt{value, false})
	i := len(r.values[term]) - 1
	return func(ok bool) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.values[term][i].ok = ok
	}
}

// campaign is one candidate's loop: campaign, lead a while, proclaiming now
// and then, and usually resign, until stop ends.
func (s *schedule) campaign(who string, e *Election, rng *rand.Rand, stop context.Context) {
	for n := 0; stop.Err() == nil; n++ {
		value := fmt.Sprintf("%s#%d", who, n)
		ctx, cancel := context.WithTimeout(context.WithValue(stop, campaignValue{}, value), time.Duration(rng.Int64N(int64(2*s.ttl))))
		term, err := e.Campaign(ctx, value)
		cancel()
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return
			}
			continue
		}
		o := s.acquired(who, term.Context(), false)
		o.term = term.Number()
		if term.Value() != value {
			s.violate("(j) term %d began with value %q; want %q", term.Number(), term.Value(), value)
		}
		for i := range rng.IntN(4) {
			select {
			case <-time.After(time.Duration(rng.Int64N(int64(s.ttl)))):
			case <-term.Context().Done():
			case <-stop.Done():
			}
			v := fmt.Sprintf("%s.%d", value, i)
			ended := term.Context().Err() != nil
			took := s.election.proclaiming(term.Number(), v)
			pctx, pcancel := context.WithTimeout(context.Background(), time.Duration(1+rng.Int64N(int64(2*s.timeout))))
			err := term.Proclaim(pctx, v)
			pcancel()
			took(err == nil)
			s.logf("%s: proclaimed %q in term %d: %v", who, v, term.Number(), err)
			if ended && !errors.Is(err, ErrLockLost) {
				s.violate("(j) Proclaim in term %d after its context ended returned %v; want ErrLockLost", term.Number(), err)
			}
			if err == nil && term.Value() != v {
				s.violate("(j) Value() = %q after Proclaim(%q) returned nil", term.Value(), v)
			}
		}
		select {
		case <-time.After(time.Duration(rng.Int64N(int64(s.ttl)))):
		case <-term.Context().Done():
		case <-stop.Done():
		}
		if rng.IntN(8) == 0 {
			s.logf("%s: leaves term %d to Close", who, term.Number())
			return
		}
		err = term.Resign(context.Background())
		s.mu.Lock()
		o.unlocked = time.Now()
		s.mu.Unlock()
		s.logf("%s: resigned term %d: %v", who, term.Number(), err)
	}
}

// finishElections waits, once every candidate's Client has closed, for the
// observers to see the election's final state, as the masters hold it,
// then ends them and closes their Client. The servers' clocks stopped with
// the schedule, so that a term a Close could not release stays, and is the
// final state; else nobody leads.
func (s *schedule) finishElections() {
	r := s.election
	if r == nil {
		return
	}
	// The final state is read by a Client of its own, with a node timeout
	// that a loaded machine does not exceed: the schedule's may be 30ms,
	// and a node whose every answer comes later stays hung. It checks the
	// servers' identity first, and a read may fail for a while.
	universal := make([]redis.UniversalClient, len(s.rcs))
	for i, rc := range s.rcs {
		universal[i] = rc
	}
	reader, err := New(universal, WithNodeTimeout(time.Second))
	if err != nil {
		panic(err)
	}
	var final Leader
	for try := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		final, err = reader.NewElection(scheduleElection).Leader(context.Background())
		if err == nil || errors.Is(err, ErrNoLeader) {
			break
		}
		if time.Since(try) > 5*time.Second {
			s.violate("(j) the final state cannot be read: %v", err)
			break
		}
	}
	if err := reader.Close(); err != nil {
		s.violate("(j) closing the final state's reader: %v", err)
	}
	r.final = Leader{Value: final.Value, Term: final.Term}
	// An observer reads again at least every watchdog interval.
	deadline := time.Now().Add(3*s.ttl + time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		all := true
		for _, states := range r.observers {
			all = all && len(states) > 0 && states[len(states)-1].Term == r.final.Term && states[len(states)-1].Value == r.final.Value
		}
		r.mu.Unlock()
		if all {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.cancel()
	r.done.Wait()
	if err := r.watcher.Close(); err != nil {
		s.violate("Close of the observers' Client: %v", err)
	}
}

// checkTerms checks (i): term numbers increase in the order the terms
// began. That no two terms were live at once, (i)'s other half, is
// checkOverlaps's.
func (s *schedule) checkTerms(holdings []*observed) {
	var terms []*observed
	for _, o := range holdings {
		if o.term != 0 {
			terms = append(terms, o)
		}
	}
	slices.SortFunc(terms, func(a, b *observed) int { return a.acquired.Compare(b.acquired) })
	for i := 1; i < len(terms); i++ {
		if a, b := terms[i-1], terms[i]; b.term <= a.term {
			s.violate("(i) term %d (%s) began at %v, after term %d (%s) at %v", b.term, b.who, b.acquired.Sub(s.t0), a.term, a.who, a.acquired.Sub(s.t0))
		}
	}
}

// checkObservers checks (j): each observer's states are states the
// election went through, in order: terms never go back, a term's values
// come in the order they were proclaimed (an earlier one may come back only
// past proclamations that failed, whose values readers may or may not see),
// and the last state is the final one. Nobody leads when no candidate
// holds a quorum of masters, which a fault can bring about while the
// leader's context still runs (it learns of it at its next extension); so
// a "nobody leads" is checked against the terms live throughout its read
// only where no fault was in force on any node since the term began.
func (s *schedule) checkObservers(holdings []*observed, ends map[string]time.Time) {
	r := s.election
	if r == nil {
		return
	}
	s.mu.Lock()
	unsafe := s.unsafe
	s.mu.Unlock()
	// A term whose Campaign failed, or lost it as it won it, may have
	// written its record on a quorum before it was released: the masters
	// went through that state, though no Term did.
	written := make(map[uint64][]attempt)
	for _, h := range s.hooks {
		for _, c := range h.sent(isKind("elect")) {
			rec := parseRecord(c.record)
			if !slices.Contains(written[rec.term], attempt{rec.value, true}) {
				written[rec.term] = append(written[rec.term], attempt{rec.value, true})
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for oi, states := range r.observers {
		if last := len(states) - 1; last < 0 || states[last].Term != r.final.Term || states[last].Value != r.final.Value {
			s.violate("(j) observer %d ended with %v; want the final state, %v", oi, states, seen{Leader: r.final})
		}
		// The last state in which someone led: its term, and the index of
		// its value among the term's attempts. A term may come back after
		// nobody led, once it has won back a quorum by repair.
		var highest uint64
		index := -1
		for i, st := range states {
			var prev seen
			if i > 0 {
				prev = states[i-1]
			}
			if st.Term == 0 {
				if i > 0 && !unsafe {
					// The read began once prev was sent, a moment before
					// the observer noted it.
					if live := liveThroughout(holdings, ends, prev.at.Add(-5*time.Millisecond), st.at); live != nil && !s.faultsDuring(live.acquired, st.at) {
						s.violate("(j) observer %d saw nobody lead at %v, but term %d (%s) was live from %v to %v with no fault in force", oi, st.at.Sub(s.t0), live.term, live.who, live.acquired.Sub(s.t0), ends[live.h.value].Sub(s.t0))
					}
				}
				continue
			}
			if st.Term < highest {
				s.violate("(j) observer %d went back from term %d to term %d at %v", oi, highest, st.Term, st.at.Sub(s.t0))
			}
			tries := r.values[st.Term]
			j := slices.IndexFunc(tries, func(a attempt) bool { return a.value == st.Value })
			if j < 0 && slices.Contains(written[st.Term], attempt{st.Value, true}) {
				// A failed attempt's record, which may even share its
				// number with a term: its fencing round did not reach a
				// quorum, whose counters would have kept the next term
				// from taking its number.
				tries = []attempt{{st.Value, true}}
				j = 0
				r.phantoms++
			}
			switch {
			case j < 0:
				s.violate("(j) observer %d saw term %d with value %q, which it never had (it had %v)", oi, st.Term, st.Value, tries)
			case st.Term == highest && j < index && slices.ContainsFunc(tries[j+1:index+1], func(a attempt) bool { return a.ok }):
				s.violate("(j) observer %d saw term %d's value go back from %q to %q past a proclamation that took", oi, st.Term, tries[index].value, st.Value)
			}
			highest, index = st.Term, j
		}
	}
}

// liveThroughout returns a term that began before from and was still live
// at to, if any.
func liveThroughout(holdings []*observed, ends map[string]time.Time, from, to time.Time) *observed {
	for _, o := range holdings {
		if o.term != 0 && o.acquired.Before(from) && ends[o.h.value].After(to) {
			return o
		}
	}
	return nil
}

// faultsDuring reports whether a fault was in force on any node at some
// moment from from to to.
func (s *schedule) faultsDuring(from, to time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, windows := range s.windows {
		for _, w := range windows {
			if w.overlaps(span{from, to}) {
				return true
			}
		}
	}
	return false
}

// String shows a state in a violation's message.
func (st seen) String() string {
	if st.Term == 0 {
		return "none"
	}
	return fmt.Sprintf("%d:%q", st.Term, st.Value)
}
