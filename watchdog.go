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
// its queue entries; the holdings own their state, and it asks them before
// it extends (admit) and tells them what it learned (extended, lose).
type watchdog struct {
	c *Client

	mu      sync.Mutex
	due     dueHeap                // entries waiting for their turn, soonest first
	entries map[*holding]*dueEntry // every holding watched, waiting or in a round
	running bool                   // the scheduling goroutine has been started
	stopped bool                   // the Client is closing: nothing more is watched
	wake    chan struct{}          // the soonest extension moved earlier
	free    []*dueEntry            // entries no round refers to, for reuse

	ctx        context.Context // ends when the Client closes: no round starts
	cancel     context.CancelFunc
	goroutines sync.WaitGroup // the scheduler and its rounds
}

// dueEntry is one holding's place in the watchdog's queue.
type dueEntry struct {
	h     *holding
	at    time.Time // next extension
	retry bool      // at is a retry after a failed round: not early
	index int       // in due, or -1 while its round runs
}

func newWatchdog(c *Client) *watchdog {
	ctx, cancel := context.WithCancel(context.Background())
	return &watchdog{c: c, entries: make(map[*holding]*dueEntry), wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel}
}

// add starts watching h, first due at at. It reports false if the Client is
// closing. The holding calls it while it holds its own lock, so the watchdog
// never takes a holding's lock while it holds its own.
func (w *watchdog) add(h *holding, at time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return false
	}
	var e *dueEntry
	if n := len(w.free); n > 0 {
		e, w.free = w.free[n-1], w.free[:n-1]
		*e = dueEntry{h: h, at: at, index: -1}
	} else {
		e = &dueEntry{h: h, at: at, index: -1}
	}
	w.entries[h] = e
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

// remove stops watching h. A round in flight for h finishes, but h does not
// come due again.
func (w *watchdog) remove(h *holding) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := w.entries[h]
	if e == nil {
		return
	}
	delete(w.entries, h)
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

// reschedule queues e again for at, if its holding is still watched.
func (w *watchdog) reschedule(e *dueEntry, at time.Time, retry bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.entries[e.h] != e {
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
		early := e.h.m.cfg.extendInterval() / 4
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

// stop ends the watchdog, since the Client is closing: no round starts, the
// rounds in flight (each bounded by the node timeout) are waited for, so
// that no release overtakes a repair, and every holding still watched is
// lost.
func (w *watchdog) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.cancel()
	w.goroutines.Wait()
	w.mu.Lock()
	watched := make([]*holding, 0, len(w.entries))
	for h := range w.entries {
		watched = append(watched, h)
	}
	w.mu.Unlock()
	for _, h := range watched {
		h.lose(LostClosed, fmt.Errorf("%w: %w", ErrLockLost, ErrClosed))
	}
}

// tally is what one extension round learned of one lock, counted once, as
// the replies come.
type tally struct {
	extended, refused, failed int
	refusedBy                 []bool    // nodes that answered that the key is gone or not ours
	decided                   time.Time // when the lock's outcome was known
}

// extend runs one extension round for the holdings in batch that are still
// held, and acts on what each lock's quorum says.
func (w *watchdog) extend(batch []*dueEntry) {
	// The round counts from before any holding is admitted to it.
	start := time.Now()
	admitted := batch[:0]
	for _, e := range batch {
		if e.h.admit() {
			admitted = append(admitted, e)
		}
	}
	if len(admitted) == 0 {
		return
	}
	first := admitted[0].h.m.name // the entries may be reused once settled
	tallies, out := w.extendRound(admitted, start)
	if w.ctx.Err() != nil {
		// The Client is closing: stop loses the locks.
		for _, e := range admitted {
			e.h.leave()
		}
		return
	}
	retried := 0
	for j, e := range admitted {
		if !w.settle(e, tallies[j], start) {
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
func (w *watchdog) extendRound(batch []*dueEntry, start time.Time) ([]tally, outcome) {
	c := w.c
	keys := make([]any, len(batch))
	argv := make([]any, 0, 2*len(batch))
	holdings := make([]*holding, len(batch))
	timeout := time.Duration(0)
	for i, e := range batch {
		m := e.h.m
		keys[i] = m.args.key
		argv = append(argv, e.h.value, m.args.ttlMillis)
		holdings[i] = e.h
		timeout = max(timeout, m.cfg.perNodeTimeout())
	}
	timeout += time.Duration(len(batch)-1) * batchKeyTime
	call := extendCall(prepare(extendScript, keys, argv...), len(batch))
	tallies := make([]tally, len(batch))
	// A call is sent again only while every lock it names is held: the
	// copy would extend them all.
	live := func() bool {
		for _, h := range holdings {
			if !h.isHeld() {
				return false
			}
		}
		return true
	}
	r := c.launch(context.Background(), roundSpec{call: call, timeout: timeout, start: start, live: live})
	out := r.wait(context.Background(), func(i int, rep reply, pendingHung int) bool {
		undecided := 0
		var now time.Time // read once per reply, for the locks it decides
		for j := range tallies {
			t := &tallies[j]
			switch {
			case rep.ok && rep.extended[j]:
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

// settle acts on what an extension round that started at start learned of
// one lock: it moves the validity on and repairs the nodes that lost the
// key, or gives the lock up, or schedules a retry. It reports false for a
// retry. The holding decides whether any of it still applies.
func (w *watchdog) settle(e *dueEntry, t tally, start time.Time) bool {
	h := e.h
	defer h.leave()
	m := h.m
	nodes := len(w.c.nodes)
	interval := m.cfg.extendInterval()
	switch {
	case t.extended >= quorum(nodes):
		until, stillHeld := h.extended(validityEnd(start, m.cfg.ttl, m.cfg.drift()))
		if !stillHeld {
			return true
		}
		observeExtension(h, t, start, ExtendOK)
		if t.refusedBy != nil && !m.cfg.noRepair {
			w.repair(h, until, t.refusedBy)
		}
		w.reschedule(e, start.Add(interval), false)
	case t.refused >= quorum(nodes):
		observeExtension(h, t, start, ExtendRefused)
		h.lose(LostRefused, fmt.Errorf("%w: %d of %d nodes no longer hold it", ErrLockLost, t.refused, nodes))
	default:
		// Too few answers: try again sooner, while validity remains.
		observeExtension(h, t, start, ExtendFailed)
		w.reschedule(e, time.Now().Add(max(interval/4, time.Millisecond)), true)
		return false
	}
	return true
}

// observeExtension tells the holding's observer, if it has one, what an
// extension round that began at start learned of the lock, unless the lock
// is no longer held.
func observeExtension(h *holding, t tally, start time.Time, outcome ExtendOutcome) {
	m := h.m
	o := m.cfg.observer
	if o == nil || o.Extended == nil || !h.isHeld() {
		return
	}
	decidedAt := t.decided
	if decidedAt.IsZero() { // the round timed out before it was decided
		decidedAt = time.Now()
	}
	observe(m.cfg.logger, "Extended", o.Extended, ExtendedEvent{Name: m.name, Latency: decidedAt.Sub(start), Outcome: outcome})
}

// repair sets the key again, with SET NX, on the nodes that said in a won
// extension round that they no longer have it (one restarted, say), so that
// one more node failure does not lose the lock. The key lives no longer
// than the validity the quorum confirmed, and never replaces another
// holder's key. The round is waited for, so that Unlock, which waits for
// this, finds no repair in flight.
func (w *watchdog) repair(h *holding, until time.Time, lostKey []bool) {
	skip := make([]error, len(lostKey))
	for i, lost := range lostKey {
		if !lost {
			skip[i] = errNotRepaired
		}
	}
	m := h.m
	timeout := m.cfg.perNodeTimeout()
	start := time.Now()
	if w.ctx.Err() != nil || !h.isHeld() {
		return
	}
	r := w.c.launch(context.Background(), roundSpec{call: m.repairCall(h.value, until), timeout: timeout, skip: skip,
		kind: repairRound, holding: h, start: start, live: h.isHeld})
	heard := 0
	out := r.wait(context.Background(), func(int, reply, int) bool {
		heard++
		return heard == len(lostKey)
	})
	for i, rep := range out.replies {
		if lostKey[i] && rep.ok {
			m.cfg.logger.Info("redlock: lock repaired on a node that had lost it", "lock", m.name, "node", i, "addr", w.c.nodes[i].addr)
		}
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
