package redlock

import (
	"container/heap"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// One watchdog per Client extends every lock the Client holds. Extensions
// that fall due within a quarter of an interval of each other go out
// together, early rather than late, as one round with one script call per
// node for up to maxBatch locks. Each lock is next due one interval after
// the round that extended it started, so the locks of a round stay in step,
// and batches fall due at least a quarter interval apart: a few rounds per
// interval, plus one per maxBatch locks, however many locks there are.
const (
	// maxBatch is the most locks extended by one call to one node.
	maxBatch = 256
	// batchKeyTime is how much longer a batch round waits for each lock in
	// it than a round for one lock: the server runs the calls in turn.
	batchKeyTime = 50 * time.Microsecond
)

// watchdog schedules the extensions of the locks a Client holds. It owns
// its queue entries; the leases own their state, and it asks them before
// it extends (beginRound) and tells them what it learned (extended, lose).
type watchdog struct {
	c *Client

	mu      sync.Mutex
	due     dueHeap              // entries waiting for their turn, soonest first
	entries map[*lease]*dueEntry // every lease watched, waiting or in a round
	running bool                 // the scheduling goroutine has been started
	stopped bool                 // the Client is closing: nothing more is watched
	wake    chan struct{}        // the soonest extension moved earlier
	free    []*dueEntry          // entries no round refers to, for reuse

	ctx        context.Context // ends when the Client closes: no round starts
	cancel     context.CancelFunc
	goroutines sync.WaitGroup // the scheduler and its rounds
}

// dueEntry is one lease's place in the watchdog's queue.
type dueEntry struct {
	l     *lease
	at    time.Time // next extension
	retry bool      // at is a retry after a failed round: not early
	index int       // in due, or -1 while its round runs
}

func newWatchdog(c *Client) *watchdog {
	ctx, cancel := context.WithCancel(context.Background())
	return &watchdog{c: c, entries: make(map[*lease]*dueEntry), wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel}
}

// add starts watching l, first due at at. It reports false if the Client is
// closing. The lease calls it while it holds its own lock, so the watchdog
// never takes a lease's lock while it holds its own.
func (w *watchdog) add(l *lease, at time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return false
	}
	var e *dueEntry
	if n := len(w.free); n > 0 {
		e, w.free = w.free[n-1], w.free[:n-1]
		*e = dueEntry{l: l, at: at, index: -1}
	} else {
		e = &dueEntry{l: l, at: at, index: -1}
	}
	w.entries[l] = e
	w.push(e)
	if !w.running {
		w.running = true
		w.goroutines.Go(w.run)
	}
	return true
}

// push queues e and wakes the scheduler if e is now the soonest. w.mu is
// held.
func (w *watchdog) push(e *dueEntry) {
	heap.Push(&w.due, e)
	if e.index == 0 {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// remove stops watching l. A round in flight for l finishes, but l does not
// come due again.
func (w *watchdog) remove(l *lease) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := w.entries[l]
	if e == nil {
		return
	}
	delete(w.entries, l)
	if e.index >= 0 {
		// Not taken by a round, which would still refer to it: reuse it.
		heap.Remove(&w.due, e.index)
		if len(w.free) < maxFree {
			w.free = append(w.free, e)
		}
	}
}

// maxFree bounds the entries kept for reuse.
const maxFree = 64

// reschedule queues e again for at, if its lease is still watched.
func (w *watchdog) reschedule(e *dueEntry, at time.Time, retry bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.entries[e.l] != e {
		return
	}
	e.at, e.retry = at, retry
	w.push(e)
}

// run starts the extensions as they fall due, until the Client closes.
func (w *watchdog) run() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		batch, next := w.takeDue(time.Now())
		for len(batch) > 0 {
			n := min(len(batch), w.c.batchLimit)
			chunk := batch[:n:n]
			batch = batch[n:]
			w.goroutines.Go(func() { w.extend(chunk) })
		}
		timer.Reset(time.Until(next))
		select {
		case <-w.wake:
		case <-timer.C:
		case <-w.ctx.Done():
			return
		}
	}
}

// takeDue takes out of the queue the entries due for extension by now, and
// those due soon enough after to go with them: within a quarter of their
// interval, unless they are retrying a failed round, which would then come
// round again at once. It returns them and when the next one falls due.
func (w *watchdog) takeDue(now time.Time) (batch []*dueEntry, next time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.due) > 0 {
		e := w.due[0]
		early := e.l.spec.interval / 4
		if e.retry {
			early = 0
		}
		if e.at.Sub(now) > early {
			return batch, e.at
		}
		heap.Pop(&w.due)
		batch = append(batch, e)
	}
	return batch, now.Add(time.Hour)
}

// shutdown ends the watchdog, since the Client is closing: no round starts,
// the rounds in flight (each bounded by the node timeout) are waited for, so
// that no release overtakes a repair, and every lease still watched is
// lost.
func (w *watchdog) shutdown() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.cancel()
	w.goroutines.Wait()
	w.mu.Lock()
	watched := make([]*lease, 0, len(w.entries))
	for l := range w.entries {
		watched = append(watched, l)
	}
	w.mu.Unlock()
	for _, l := range watched {
		l.lose(LostClosed, fmt.Errorf("%w: %w", ErrLockLost, ErrClosed))
	}
}

// tally is what one extension round learned of one lock, counted once, as
// the replies come.
type tally struct {
	extended, refused, failed int
	refusedBy                 []bool    // nodes that answered that the key is gone or not ours
	decided                   time.Time // when the lock's outcome was known
}

// extend runs one extension round for the leases in batch that are still
// held, and acts on what each lock's quorum says.
func (w *watchdog) extend(batch []*dueEntry) {
	// The round counts from before any lease is admitted to it.
	start := time.Now()
	admitted := batch[:0]
	for _, e := range batch {
		if e.l.beginRound() {
			admitted = append(admitted, e)
		}
	}
	if len(admitted) == 0 {
		return
	}
	first := admitted[0].l.spec.name // the entries may be reused once applied
	// A lock kept on a set with a node missing: check the nodes again, if
	// due, so that a node back from a restart counts again.
	w.c.dueCheck(admitted[0].l.spec.nodeTimeout)
	tallies, out := w.extendRound(admitted, start)
	if w.ctx.Err() != nil {
		// The Client is closing: shutdown loses the leases.
		for _, e := range admitted {
			e.l.roundDone()
		}
		return
	}
	retried := 0
	for j, e := range admitted {
		if !w.apply(e, tallies[j], start) {
			retried++
		}
	}
	if retried > 0 {
		w.c.cfg.logger.Warn("redlock: extension failed; retrying", "locks", retried, "first", first, "error", out.round.nodeErrors(out.replies))
	}
}

// extendRound sends one extension call per node for the entries, and counts
// each node's answer for each lock as it comes, until every lock is decided:
// extended by a quorum, or no longer able to be.
func (w *watchdog) extendRound(batch []*dueEntry, start time.Time) ([]tally, outcome[[]bool]) {
	c := w.c
	keys := make([]any, 0, 2*len(batch))
	argv := make([]any, 0, 3*len(batch))
	leases := make(allHeld, len(batch))
	timeout := time.Duration(0)
	for i, e := range batch {
		x := e.l.spec.kind.extension(e.l.value)
		keys = append(keys, x.key, x.renewed)
		argv = append(argv, e.l.value, x.ttl, x.until)
		leases[i] = e.l
		timeout = max(timeout, e.l.spec.nodeTimeout)
	}
	timeout += time.Duration(len(batch)-1) * batchKeyTime
	call := extendCall(prepare(extendScript, keys, argv...), len(batch))
	tallies := make([]tally, len(batch))
	// A call is sent again only while every lock it names is held: the
	// copy would extend them all. The first send goes out regardless: a
	// lease that ended meanwhile waits for this round before its release.
	r := launch(c, context.Background(), roundSpec[[]bool]{call: call, timeout: timeout, start: start, resendLive: &leases,
		heard: refusalsHeard{leases: leases, nodes: len(c.nodes)}})
	out := r.wait(context.Background(), func(i int, rep reply[[]bool], pendingHung int) bool {
		undecided := 0
		var now time.Time // read once per reply, for the locks it decides
		for j := range tallies {
			t := &tallies[j]
			switch {
			case rep.ok && rep.value[j]:
				t.extended++
			case rep.ok:
				t.refused++
				t.refusedBy = setBit(t.refusedBy, i, len(c.nodes))
			default:
				t.failed++
			}
			if !decided(t.extended, t.refused+t.failed, pendingHung, len(c.nodes)) {
				undecided++
			} else if t.decided.IsZero() {
				if now.IsZero() {
					now = time.Now()
				}
				t.decided = now
			}
		}
		return undecided == 0
	})
	return tallies, out
}

// apply acts on what an extension round that started at start learned of
// one lock: it moves the validity on and repairs the nodes that lost the
// key, or gives the lock up, or schedules a retry. It reports false for a
// retry. The lease decides whether any of it still applies.
func (w *watchdog) apply(e *dueEntry, t tally, start time.Time) bool {
	l := e.l
	defer l.roundDone()
	nodes := len(w.c.nodes)
	interval := l.spec.interval
	switch {
	case t.extended >= quorum(nodes):
		until, stillHeld := l.extended(l.spec.validityEnd(start))
		if !stillHeld {
			return true
		}
		observeExtension(l, t, start, ExtendOK)
		refused := orBits(t.refusedBy, l.takeRefusals())
		if refused != nil && l.spec.repair {
			w.repair(l, until, refused)
		}
		w.reschedule(e, start.Add(interval), false)
	case t.refused >= quorum(nodes):
		observeExtension(l, t, start, ExtendRefused)
		l.lose(LostRefused, fmt.Errorf("%w: %d of %d nodes no longer hold it", ErrLockLost, t.refused, nodes))
	default:
		// Too few answers: try again sooner, while validity remains.
		observeExtension(l, t, start, ExtendFailed)
		w.reschedule(e, time.Now().Add(max(interval/4, time.Millisecond)), true)
		return false
	}
	return true
}

// refusalsHeard notes, on each lease of an extension round, the nodes that
// say they no longer have its key, whenever their answers come: the round's
// wait stops at a quorum, so a node that lost a key and always answers last
// would otherwise never be repaired. apply repairs what was noted after the
// next won round.
// It holds the leases, not the entries, which the watchdog reuses for other
// leases once a round is applied.
type refusalsHeard struct {
	leases []*lease
	nodes  int
}

func (h refusalsHeard) heard(n *node, rep reply[[]bool], _, _ bool) {
	if !rep.ok {
		return
	}
	for j, extended := range rep.value {
		if !extended && j < len(h.leases) {
			h.leases[j].noteRefusal(n.index, h.nodes)
		}
	}
}

// orBits returns the nodes in a or b, or nil if there are none.
func orBits(a, b []bool) []bool {
	if b == nil {
		return a
	}
	if a == nil {
		return b
	}
	for i, bit := range b {
		a[i] = a[i] || bit
	}
	return a
}

// allHeld says whether every lease of an extension round is still held.
type allHeld []*lease

func (a *allHeld) wanted() bool {
	for _, l := range *a {
		if !l.isHeld() {
			return false
		}
	}
	return true
}

// observeExtension tells the lease's observer, if it has one, what an
// extension round that began at start learned of the lock, unless the lock
// is no longer held.
func observeExtension(l *lease, t tally, start time.Time, outcome ExtendOutcome) {
	if !l.spec.events.on() || !l.isHeld() {
		return
	}
	decidedAt := t.decided
	if decidedAt.IsZero() { // the round timed out before it was decided
		decidedAt = time.Now()
	}
	l.spec.events.extended(start, decidedAt, outcome)
}

// repair sets the key again, with SET NX, on the nodes that said in a won
// extension round that they no longer have it (one restarted, say), so that
// one more node failure does not lose the lock. The key lives no longer
// than the validity the quorum confirmed, and never replaces another
// holder's key. The round is waited for, so that Unlock, which waits for
// this, finds no repair in flight.
func (w *watchdog) repair(l *lease, until time.Time, lostKey []bool) {
	skip := make([]error, len(lostKey))
	for i, lost := range lostKey {
		if !lost {
			skip[i] = errNotRepaired
		}
	}
	start := time.Now()
	if w.ctx.Err() != nil || !l.isHeld() {
		return
	}
	// Every call is waited for, up to the node timeout, even where nodes
	// hung in an earlier round would make a quorum round decided at once.
	r := launch(w.c, context.Background(), roundSpec[none]{call: l.spec.kind.repair(l.value, until), timeout: l.spec.nodeTimeout, skip: skip,
		heard: (*repairing)(l), start: start, live: (*holding)(l), waitAll: true})
	heard := 0
	out := r.wait(context.Background(), func(int, reply[none], int) bool {
		heard++
		return heard == len(lostKey)
	})
	for i, rep := range out.replies {
		if lostKey[i] && rep.ok {
			l.spec.logger.Info("redlock: lock repaired on a node that had lost it", "lock", l.spec.name, "node", i, "addr", w.c.nodes[i].addr)
		}
	}
}

// extendCall extends, on one node, the locks a prepared extend script names;
// count says how many. The reply says, lock by lock, which it extended.
func extendCall(extend prepared, count int) nodeCall[[]bool] {
	return func(ctx context.Context, n *node, live liveness) reply[[]bool] {
		res, err := extend.run(ctx, n, live).Int64Slice()
		if err == nil && len(res) != count {
			err = fmt.Errorf("extend script returned %d values; want %d", len(res), count)
		}
		if err != nil {
			return reply[[]bool]{err: err}
		}
		extended := make([]bool, count)
		for j, v := range res {
			extended[j] = v == 1
		}
		return reply[[]bool]{ok: true, value: extended}
	}
}

// batchLimit is how many locks one extension call to each node may carry:
// one script call names many keys, which a Redis Cluster refuses unless they
// share a hash slot, so only Clients of plain servers batch.
func batchLimit(nodes []*node) int {
	for _, n := range nodes {
		if _, plain := n.client.(*redis.Client); !plain {
			return 1
		}
	}
	return maxBatch
}

// dueHeap orders entries by their next extension.
type dueHeap []*dueEntry

func (d dueHeap) Len() int           { return len(d) }
func (d dueHeap) Less(i, j int) bool { return d[i].at.Before(d[j].at) }
func (d dueHeap) Swap(i, j int) {
	d[i], d[j] = d[j], d[i]
	d[i].index = i
	d[j].index = j
}

func (d *dueHeap) Push(x any) {
	e := x.(*dueEntry)
	e.index = len(*d)
	*d = append(*d, e)
}

func (d *dueHeap) Pop() any {
	old := *d
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*d = old[:len(old)-1]
	e.index = -1
	return e
}
