package redlock

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Election chooses one leader among the candidates that campaign under its
// name, over the same masters. A term is a lease on the election's lock,
// whose fencing token is the term's number, and whose holder's record (its
// term, its value) sits beside it on each node. An Election is safe for
// concurrent use: goroutines of one process that campaign on one Election
// are serialised locally first, as on a Mutex. Make one with
// Client.NewElection; the zero value is not usable.
type Election struct {
	client *Client
	name   string
	// lock is the election's lock, with fencing: its holder leads.
	lock      *Mutex
	channel   string // where its changes are published, for observers
	electKeys []any  // the lock's key, its fencing counter, the record
	readKeys  []any  // the lock's key, the record
	// term is the Election's live Term, whose record a repair writes
	// again, or nil.
	term atomic.Pointer[Term]
}

// Term is one candidate's leadership, from Campaign until Resign or until it
// is lost. Its zero value is not usable.
type Term struct {
	e      *Election
	l      *lease
	held   context.Context
	number uint64
	// stopLapse stops the call that frees the Election when the term ends
	// without Resign.
	stopLapse func() bool
	resigned  atomic.Bool

	mu           sync.Mutex // orders Proclaims
	value        string     // the value last proclaimed
	proclamation uint64     // the last proclamation sent, successful or not
	// proclaimed is the record of the last successful proclamation, for
	// a repair to write again.
	proclaimed atomic.Pointer[proclaimedRecord]
}

// proclaimedRecord is a proclamation that a quorum recorded.
type proclaimedRecord struct {
	proclamation uint64
	value        string
}

// Leader is an election's state as its masters tell it: who leads, with
// which value, for how long. Its zero value says that nobody leads.
type Leader struct {
	Value string
	Term  uint64        // the term number; 0: nobody leads
	TTL   time.Duration // how long a quorum keeps the term without an extension
}

// The election's keys are named after its lock's key, in one hash slot.
const (
	electionSuffix = ":election" // the lock, after the name's hash tag
	recordSuffix   = ":leader"   // the leader's record, after the lock's key
)

// leaderChannelPrefix starts the name of every election's channel.
const leaderChannelPrefix = "redlock:leader:"

// NewElection returns an Election called name. The options override the
// Client's for this Election; WithExactKey does not apply and is rejected,
// and fencing is always on, since terms are fencing tokens. An empty name,
// a name with a brace or an invalid option is reported by every call on the
// Election: Campaign and Leader return the error, and Observe's channel is
// closed at once. NewElection does not contact Redis.
func (c *Client) NewElection(name string, opts ...Option) *Election {
	cfg := c.cfg
	cfg.errs, cfg.exactKey = nil, false
	cfg.apply(opts)
	errs := []error{cfg.validate()}
	if cfg.exactKey {
		errs = append(errs, errors.New("redlock: WithExactKey does not apply to an Election"))
	}
	switch {
	case name == "":
		errs = append(errs, errors.New("redlock: election name is empty"))
	case strings.ContainsAny(name, "{}"):
		errs = append(errs, fmt.Errorf("redlock: election name %q has a brace, which would break the hash tag of its keys", name))
	}
	cfg.fencing = true
	key := cfg.keyPrefix + "{" + name + "}" + electionSuffix
	m := &Mutex{
		client: c,
		name:   name,
		key:    key,
		kind:   newMutexKind(c, key, &cfg),
		cfg:    cfg,
		err:    errors.Join(errs...),
		retry:  newRetryPolicy(&cfg),
		local:  make(chan struct{}, 1),
	}
	record := key + recordSuffix
	m.kind.renewed, m.kind.renewedTTL = record, m.kind.ttlMillis
	// A release deletes the record with the lock, which Leader would read
	// as no leader anyway, so that a term leaves nothing behind; so does
	// the release of a leftover.
	m.kind.releaseKeys = append(m.kind.releaseKeys, record)
	m.kind.record = record
	m.spec = cfg.leaseSpec(c, &m.kind, KindElection, name)
	e := &Election{
		client:    c,
		name:      name,
		lock:      m,
		channel:   leaderChannelPrefix + key,
		electKeys: []any{key, key + fenceSuffix, record},
		readKeys:  []any{key, record},
	}
	m.kind.recorder = e.recordAgain
	return e
}

// recordAgain returns the call that writes the record of holder's term
// again, if holder holds the Election's live Term.
func (e *Election) recordAgain(holder string) nodeCall[none] {
	t := e.term.Load()
	if t == nil || t.l.value != holder {
		return nil
	}
	p := t.proclaimed.Load()
	return e.record(holder, t.number, p.proclamation, p.value)
}

// Name returns the name the Election was made with.
func (e *Election) Name() string { return e.name }

// Campaign waits until this candidate leads, with value as its value, and
// returns its Term. Candidates wait in the order they came, and a Resign or
// a release wakes the next; another goroutine of this process that
// campaigns on e waits until this one's term has ended. If ctx ends first
// (or WithWaitTimeout's wait), Campaign returns an error wrapping
// ErrNotAcquired and ctx.Err(), and leaves no key and no place in the queue
// behind. The Term's context does not derive its end from ctx: it ends when
// the term is lost or at Resign. Campaign never returns a Term whose lease
// has already been lost. Its other errors are LockContext's. It panics if
// ctx is nil.
func (e *Election) Campaign(ctx context.Context, value string) (*Term, error) {
	mustContext(ctx)
	waitCtx := ctx
	if e.lock.cfg.waitTimeout > 0 {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, e.lock.cfg.waitTimeout)
		defer cancel()
	}
	for {
		w := e.lock.newWaiter(context.WithoutCancel(ctx), waitCtx, false)
		w.lock = candidate{e, value}
		held, err := e.lock.acquireBy(w)
		if err != nil {
			return nil, err
		}
		l := held.(*heldContext).l
		// The token, not validity's, which is 0 once the lease is lost.
		t := &Term{e: e, l: l, held: held, number: l.fencingToken(), value: value, proclamation: 1}
		t.proclaimed.Store(&proclaimedRecord{1, value})
		e.term.Store(t)
		t.stopLapse = context.AfterFunc(held, t.lapse)
		if held.Err() == nil {
			return t, nil
		}
		// Lost as it was won: free the Election, and campaign again.
		if t.stopLapse() {
			t.lapse()
		}
	}
}

// candidate is one Campaign's contender: the election's lock, whose won
// acquisitions record their leader with value.
type candidate struct {
	e     *Election
	value string
}

func (c candidate) attempt(waitCtx, ctx context.Context, waiter string) (context.Context, bool, error) {
	return c.e.lock.attemptFenced(waitCtx, ctx, waiter, func(holder string, term uint64) nodeCall[none] {
		return c.e.record(holder, term, 1, c.value)
	})
}

func (c candidate) joinQueue(ctx context.Context, waiter, mode string) queueView {
	return c.e.lock.joinQueue(ctx, waiter, mode)
}

func (c candidate) leaveQueue(waiter string, won bool) { c.e.lock.leaveQueue(waiter, won) }

func (c candidate) dequeueOn(waiter string, woke []bool) { c.e.lock.dequeueOn(waiter, woke) }

// record writes the leader's record on a node while holder holds the
// election's lock there, and tells the observers.
func (e *Election) record(holder string, term, proclamation uint64, value string) nodeCall[none] {
	elect := prepare(electScript, e.electKeys, holder, term, fmtRecord(term, proclamation, holder, value), e.channel)
	return func(ctx context.Context, n *node, live liveness) reply[none] {
		res, err := elect.run(ctx, n, live).Int64()
		return reply[none]{ok: err == nil && res == 1, err: err}
	}
}

// Context returns the term's context: it ends when the term is lost, before
// the leadership could lapse on the masters (context.Cause then wraps
// ErrLockLost), or at Resign.
func (t *Term) Context() context.Context { return t.held }

// Number returns the term's number: larger than the number of every earlier
// term of the election, so that a resource that remembers the largest it
// has seen can turn away a leader that was deposed.
func (t *Term) Number() uint64 { return t.number }

// Value returns the value of the last Proclaim that returned nil, or the
// one the leader campaigned with.
func (t *Term) Value() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.value
}

// Proclaim makes value the leader's value: once it returns nil, Leader and
// the observers see it. It waits for a quorum of masters, each for no longer
// than the node timeout, or until ctx ends. Once the term has ended
// (resigned or lost) it sends nothing and returns an error wrapping
// ErrLockLost. If a quorum of masters says that the term has lapsed, its
// error wraps ErrLockLost; if too few answered, it wraps ErrNoQuorum with
// their errors, and readers may see either value until the next Proclaim
// succeeds, or until repairs of masters that lost the term carry the value
// of this one, the latest, to them. A Proclaim under way when the term
// reaches its maximum hold may still land while the masters keep the term
// (WithMaxHold), and then returns nil. It panics if ctx is nil.
func (t *Term) Proclaim(ctx context.Context, value string) error {
	mustContext(ctx)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.ended(); err != nil {
		return err
	}
	c := t.e.client
	if !c.enterCall() {
		return ErrClosed
	}
	defer c.exitCall()
	t.proclamation++
	// Repairs write this record from now on, whatever the outcome: a
	// Proclaim that fails may have reached some masters, and readers of
	// those must not see the term's value go back once others are
	// repaired.
	t.proclaimed.Store(&proclaimedRecord{t.proclamation, value})
	out := fanOut(c, ctx, t.e.lock.spec.nodeTimeout, t.e.record(t.l.value, t.number, t.proclamation, value))
	nodes := len(c.nodes)
	switch {
	case out.won:
		t.value = value
		return nil
	case out.refusals >= quorum(nodes):
		// The quorum says the term is over, as an extension would find:
		// its context ends now, not at the next extension.
		err := fmt.Errorf("redlock: proclaim in term %d of %q: %w: %d of %d nodes no longer hold it", t.number, t.e.name, ErrLockLost, out.refusals, nodes)
		t.l.lose(LostRefused, err)
		return err
	case ctx.Err() != nil:
		return fmt.Errorf("redlock: proclaim in term %d of %q: %w", t.number, t.e.name, errors.Join(ctx.Err(), out.errs))
	}
	return fmt.Errorf("redlock: proclaim in term %d of %q reached %d of %d nodes: %w: %w", t.number, t.e.name, out.oks, nodes, ErrNoQuorum, out.errs)
}

// ended is the error of a call on a term that has ended, or nil.
func (t *Term) ended() error {
	if t.resigned.Load() {
		return fmt.Errorf("redlock: term %d of %q: %w: it was resigned", t.number, t.e.name, ErrLockLost)
	}
	if t.held.Err() != nil {
		return fmt.Errorf("redlock: term %d of %q: %w", t.number, t.e.name, context.Cause(t.held))
	}
	return nil
}

// Resign ends the term, as Unlock ends a Mutex's holding: the term's context
// ends, the lock is released on every node where the term still holds it,
// the next candidate is woken, and observers are told. It returns as Unlock
// does: ErrNotHeld the second time, an error wrapping ErrLockLost if the
// term had been lost, and otherwise the node errors that kept a quorum
// from confirming. ctx bounds only the wait for the nodes' answers. It
// panics if ctx is nil.
func (t *Term) Resign(ctx context.Context) error {
	mustContext(ctx)
	if !t.resigned.CompareAndSwap(false, true) {
		return ErrNotHeld
	}
	e := t.e
	e.term.CompareAndSwap(t, nil)
	if !e.lock.current.CompareAndSwap(t.l, nil) {
		// The term lapsed, and lapse has freed the Election.
		return fmt.Errorf("redlock: term %d of %q: %w", t.number, e.name, context.Cause(t.held))
	}
	t.stopLapse()
	err := e.lock.unlock(ctx, t.l)
	e.announce()
	return err
}

// lapse frees the Election after the term ended without Resign, so that
// the process may campaign again: it releases what the term may still hold.
//
// A term that reached its maximum hold is kept on the masters until its
// validity ends, as a Mutex's key is (WithMaxHold), unless Resign or Close
// comes first: no other candidate leads while the deposed leader may still
// be finishing the step it began. Observers are told once it is released.
func (t *Term) lapse() {
	e := t.e
	if until, early, kept := t.l.keptUntil(); kept {
		timer := time.NewTimer(time.Until(until))
		select {
		case <-timer.C:
		case <-early: // Resign
		case <-e.client.closing:
		}
		timer.Stop()
	}
	e.term.CompareAndSwap(t, nil)
	if !e.lock.current.CompareAndSwap(t.l, nil) {
		return // Resign came first
	}
	if !e.client.enterCall() {
		<-e.lock.local // Close releases the lease
		return
	}
	defer e.client.exitCall()
	_ = e.lock.unlock(context.Background(), t.l)
	e.announce()
}

// announce tells the election's observers that the leadership changed,
// where no script did: at Resign. It waits for a quorum at most.
func (e *Election) announce() {
	c := e.client
	if !c.enterCall() {
		return
	}
	defer c.exitCall()
	channel := e.channel
	call := func(ctx context.Context, n *node, live liveness) reply[none] {
		cmd, _ := send(ctx, n, live, redis.NewIntCmd, []any{"publish", channel, "0"})
		err := cmd.Err()
		return reply[none]{ok: err == nil, err: err}
	}
	ctx := context.Background()
	launch(c, ctx, roundSpec[none]{call: call, timeout: e.lock.spec.nodeTimeout, anyNode: true}).wait(ctx, nil)
}

// leaderRead is one node's view of an election.
type leaderRead struct {
	holder string
	record leaderRecord
	ttl    time.Duration
}

// leaderRecord is a leader's record as elect.lua stores it.
type leaderRecord struct {
	term, proclamation uint64
	holder, value      string
}

// fmtRecord makes the record of a leader's proclamation.
func fmtRecord(term, proclamation uint64, holder, value string) string {
	return strconv.FormatUint(term, 10) + ":" + strconv.FormatUint(proclamation, 10) + ":" + holder + "\n" + value
}

// parseRecord reads a record, "term:proclamation:holder", a newline, and
// the value (a holder's value has no newline; the value may); a malformed
// one is the zero record.
func parseRecord(text string) leaderRecord {
	head, value, found := strings.Cut(text, "\n")
	parts := strings.SplitN(head, ":", 3)
	if !found || len(parts) != 3 {
		return leaderRecord{}
	}
	term, err1 := strconv.ParseUint(parts[0], 10, 64)
	proclamation, err2 := strconv.ParseUint(parts[1], 10, 64)
	if err1 != nil || err2 != nil {
		return leaderRecord{}
	}
	return leaderRecord{term: term, proclamation: proclamation, holder: parts[2], value: value}
}

// read is the call of a Leader round.
func (e *Election) read() nodeCall[leaderRead] {
	read := prepare(leaderScript, e.readKeys)
	return func(ctx context.Context, n *node, live liveness) reply[leaderRead] {
		res, err := read.run(ctx, n, live).Slice()
		if err != nil {
			return reply[leaderRead]{err: err}
		}
		if len(res) != 3 {
			return reply[leaderRead]{err: fmt.Errorf("leader script returned %d values; want 3", len(res))}
		}
		holder, _ := res[0].(string)
		record, _ := res[1].(string)
		ttl, _ := res[2].(int64)
		return reply[leaderRead]{ok: true, value: leaderRead{holder: holder, record: parseRecord(record), ttl: time.Duration(ttl) * time.Millisecond}}
	}
}

// Leader reads who leads the election from the masters: the value and term
// that a quorum of them holds, with the TTL the quorum confirms. It returns
// ErrNoLeader when no candidate holds a quorum, or a candidate that holds
// one has not written its record yet. It returns as soon as either is
// certain, after each node's answer or the node timeout; a node that
// failed counts as one that may hold the term, and if too few answered to
// be certain, or ctx ended first, it returns their errors.
//
// The masters record a term in the round that writes its number, before
// its Campaign returns: a reader may see the term a moment before its
// leader does, and, if that Campaign then fails (its round was cut short
// by ctx, or took longer than the TTL allows), a term that nobody held,
// until the failed attempt's release, which deletes the record, or its
// TTL. No Term has that number unless a later Campaign takes it (the
// failed round may not have raised a quorum's counters), so a resource
// fenced with term numbers is not misled. It panics if ctx is nil.
func (e *Election) Leader(ctx context.Context) (Leader, error) {
	mustContext(ctx)
	state, err := e.leader(ctx)
	return state.Leader, err
}

// reading is what a read of the election found: the leader, and the
// proclamation of the leader's record that it read.
type reading struct {
	Leader
	proclamation uint64
	holder       string // the lock's value: it tells apart terms of one number
}

// leader is Leader, with the proclamation read.
func (e *Election) leader(ctx context.Context) (reading, error) {
	if err := e.lock.usable(); err != nil {
		return reading{}, err
	}
	c := e.client
	if !c.enterCall() {
		return reading{}, ErrClosed
	}
	defer c.exitCall()
	if err := ctx.Err(); err != nil {
		return reading{}, fmt.Errorf("redlock: leader: %w", err)
	}
	if permanent, err := c.identify(ctx, e.lock.spec.nodeTimeout); permanent {
		return reading{}, fmt.Errorf("redlock: leader: %w", err)
	}
	nodes := len(c.nodes)
	var holders []string
	var reads []leaderRead
	unanswered := nodes
	decided := false
	r := launch(c, ctx, roundSpec[leaderRead]{call: e.read(), timeout: e.lock.spec.nodeTimeout})
	out := r.wait(ctx, func(_ int, rep reply[leaderRead], _ int) bool {
		unanswered--
		if rep.ok {
			holders = append(holders, rep.value.holder)
			reads = append(reads, rep.value)
		}
		// A node that failed may hold the term as well as one that has not
		// answered: nobody leads only if the nodes read say so even were
		// every other node the holder's.
		most, _ := mostCommon(holders)
		unknown := nodes - len(reads)
		decided = most >= quorum(nodes) || (len(reads) >= quorum(nodes) && most+unknown < quorum(nodes))
		return decided || unanswered == 0
	})
	if !decided {
		if r.ctxErr != nil {
			return reading{}, fmt.Errorf("redlock: leader: %d of %d nodes had answered: %w", len(reads), nodes, r.ctxErr)
		}
		if len(reads) < quorum(nodes) {
			return reading{}, fmt.Errorf("redlock: leader read from %d of %d nodes, fewer than a quorum: %w", len(reads), nodes, r.nodeErrors(out.replies))
		}
		// A quorum answered, but the nodes that failed could make either
		// answer true.
		return reading{}, fmt.Errorf("redlock: leader read from %d of %d nodes, which do not agree, and the rest failed: %w", len(reads), nodes, r.nodeErrors(out.replies))
	}
	return leaderOf(reads, nodes)
}

// leaderOf decides what a quorum of reads says.
func leaderOf(reads []leaderRead, nodes int) (reading, error) {
	holders := make([]string, len(reads))
	for i, rd := range reads {
		holders[i] = rd.holder
	}
	most, holder := mostCommon(holders)
	if most < quorum(nodes) {
		return reading{}, ErrNoLeader
	}
	var best leaderRecord
	var ttls []time.Duration
	for _, rd := range reads {
		if rd.holder != holder {
			continue
		}
		ttls = append(ttls, rd.ttl)
		if rd.record.holder == holder && rd.record.proclamation > best.proclamation {
			best = rd.record
		}
	}
	if best.term == 0 {
		return reading{}, ErrNoLeader // its term has not begun
	}
	slices.Sort(ttls)
	return reading{Leader{Value: best.value, Term: best.term, TTL: ttls[len(ttls)-quorum(nodes)]}, best.proclamation, holder}, nil
}

// Observe returns a channel that receives the election's state: the
// current one first, then each change, as Leader reads them: a new term, a
// proclaimed value, and Leader{} when nobody leads, whether the leader
// resigned or its term lapsed. A lapse is seen no later than the lapsed
// term's TTL plus one node timeout after the last read that showed it.
// Changes are pushed by the masters, and a quorum read every watchdog
// interval catches a message that was lost; states that follow each other
// faster than they are read or received may be missed, but neither term
// numbers nor a term's values go back on one channel: a value that a
// failed or unfinished Proclaim left on some masters is not followed by
// the older one (a term that lost its quorum for a while, which is sent as
// Leader{}, is sent again if repair wins it back). Reads that fail send
// nothing and are retried. The channel is closed when ctx ends, at once if
// the Election is badly made, and when the Client closes; nothing of the
// observer's is left running after that (the Client's subscriptions, which
// its Mutexes' wake-ups share, run until Close). It panics if ctx is nil.
func (e *Election) Observe(ctx context.Context) <-chan Leader {
	mustContext(ctx)
	states := make(chan Leader)
	c := e.client
	if e.lock.err != nil || !c.enterCall() {
		close(states)
		return states
	}
	w := c.notifier.watch(e.channel)
	go func() {
		defer c.exitCall()
		defer close(states)
		defer w.stop()
		e.observe(ctx, states, w)
	}()
	return states
}

// observe reads the election and sends its changes, until ctx ends or the
// Client closes.
func (e *Election) observe(ctx context.Context, states chan<- Leader, w *watch) {
	var last, highest reading // the state last sent, and the latest sent
	sent := false
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-w.C:
			timer.Stop()
		case <-ctx.Done():
			return
		case <-e.client.closing:
			return
		}
		start := time.Now()
		state, err := e.leader(ctx)
		next := e.lock.spec.interval
		switch {
		case err != nil && !errors.Is(err, ErrNoLeader):
			next = e.lock.retry.next(false)
		case newer(state, last, sent, highest):
			select {
			case states <- state.Leader:
			case <-ctx.Done():
				return
			case <-e.client.closing:
				return
			}
			last, sent = state, true
			if state.Term != 0 {
				highest = state
			}
		}
		if state.Term != 0 && err == nil {
			// Read again when the term would lapse without an extension.
			next = min(next, time.Until(start.Add(state.TTL)))
		}
		timer.Reset(max(next, time.Millisecond))
	}
}

// newer reports whether an observer that last sent last (if sent), and
// highest as its latest term and proclamation, sends state: a change, which
// goes back neither in term nor in proclamation. A quorum read while a
// Proclaim is under way may or may not hold a master that has its record;
// the older of the two is not sent after the newer. The latest is sent
// again after nobody led: a term that lost its quorum for a while (a node
// restarted) and won it back by repair is the masters' leader again. A term
// of the number of the latest but of another holder is another term: a
// failed Campaign's attempt, read before its release, left a record with
// a number that a later Campaign took again.
func newer(state, last reading, sent bool, highest reading) bool {
	switch {
	case !sent:
		return true
	case state.Term == 0:
		return last.Term != 0
	case state.Term != highest.Term:
		return state.Term > highest.Term
	case state.holder != highest.holder:
		return true
	case state.proclamation != highest.proclamation:
		return state.proclamation > highest.proclamation
	}
	return last.Term == 0 // the latest again, after nobody led
}
