package redlock

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// One watchdog per Client extends every lock the Client holds. Extensions
// that fall due within a quarter of an interval of each other go out
// together, early rather than late, as one round with one script call per
// node for up to maxBatch locks. Each lock is next due one interval after
// the round that extended it, so the locks of a round stay in step, and
// batches fall due at least a quarter interval apart: a few rounds per
// interval, plus one per maxBatch locks, however many locks there are.
const (
	// maxBatch is the most locks extended by one call to one node.
	maxBatch = 256
	// batchKeyTime is how much longer a batch round waits for each lock in
	// it than a round for one lock: the server runs the calls in turn.
	batchKeyTime = 50 * time.Microsecond
)

// watchdog schedules the extensions of every lock a Client holds. Each held
// lock also has an expiry timer (its Mutex's, which serves one holding at a
// time) that ends its held context just before its validity ends, whatever
// the extension rounds are doing.
type watchdog struct {
	c *Client

	mu      sync.Mutex
	due     dueHeap               // locks waiting for their next extension, soonest first
	held    map[*holding]struct{} // every lock watched
	running bool                  // the scheduling goroutine has been started
	wake    chan struct{}         // the soonest extension moved earlier

	ctx    context.Context // ends when the Client closes: rounds stop waiting
	cancel context.CancelFunc
}

func newWatchdog(c *Client) *watchdog {
	ctx, cancel := context.WithCancel(context.Background())
	return &watchdog{c: c, held: make(map[*holding]struct{}), wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel}
}

// watch starts extending h, unless the Client is closing, in which case the
// lock is given up at once.
func (w *watchdog) watch(h *holding) {
	m := h.mutex
	c := w.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		m.loseLock(h, fmt.Errorf("%w: %w", ErrLockLost, ErrClosed))
		return
	}
	// The expiry timer runs from the start, not only once extensions are
	// due: a process that wakes from a pause longer than the validity must
	// see held end at once, before the work it resumes.
	w.arm(h)

	w.mu.Lock()
	defer w.mu.Unlock()
	w.held[h] = struct{}{}
	if !w.running {
		w.running = true
		c.watchdogs.Go(w.run)
	}
	w.schedule(h, time.Now().Add(m.cfg.extendInterval()), false)
}

// arm sets the Mutex's expiry timer for h, unless h is no longer held.
func (w *watchdog) arm(h *holding) {
	m := h.mutex
	m.mu.Lock()
	defer m.mu.Unlock()
	if h.stopped || h.lost != nil {
		return
	}
	d := time.Until(h.until) - h.guard
	if m.expiry == nil {
		m.expiry = time.AfterFunc(d, m.expire)
	} else {
		m.expiry.Reset(d)
	}
}

// schedule queues h for extension at t, or no earlier than t if retry, if
// it is still watched. The caller holds w.mu.
func (w *watchdog) schedule(h *holding, t time.Time, retry bool) {
	if _, ok := w.held[h]; !ok {
		return
	}
	h.extendAt, h.retry = t, retry
	heap.Push(&w.due, h)
	if h.heapIndex == 0 {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// forget stops watching h: Unlock, a lost lock, or Close.
func (w *watchdog) forget(h *holding) {
	w.mu.Lock()
	delete(w.held, h)
	if h.heapIndex >= 0 {
		heap.Remove(&w.due, h.heapIndex)
	}
	w.mu.Unlock()
	m := h.mutex
	m.mu.Lock()
	// The timer is the Mutex's: leave it alone if it is already set for
	// a later holding.
	if m.expiry != nil && (m.held == h || m.held == nil) {
		m.expiry.Stop()
	}
	m.mu.Unlock()
}

// expire ends the held context of the Mutex's holding when its validity is
// about to end with no quorum confirmed, unless an extension has moved the
// end since the timer was set.
func (m *Mutex) expire() {
	m.mu.Lock()
	h := m.held
	if h == nil || h.lost != nil || h.stopped {
		m.mu.Unlock()
		return
	}
	until := h.until
	if left := time.Until(until) - h.guard; left > 0 {
		m.expiry.Reset(left)
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	m.loseLock(h, fmt.Errorf("%w: no quorum confirmed it before its validity ended at %v", ErrLockLost, until.Format(time.RFC3339Nano)))
	m.client.watchdog.forget(h)
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
			w.c.watchdogs.Go(func() { w.extend(chunk) })
		}
		timer.Reset(time.Until(next))
		select {
		case <-w.wake:
		case <-timer.C:
		case <-w.c.closing:
			w.close()
			return
		}
	}
}

// takeDue takes out of the queue the locks due for extension by now, and
// those due soon enough after to go with them: within a quarter of their
// interval, unless they are retrying a failed round, which would then come
// round again at once. It returns them and when the next one falls due.
func (w *watchdog) takeDue(now time.Time) (batch []*holding, next time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.due) > 0 {
		h := w.due[0]
		early := h.mutex.cfg.extendInterval() / 4
		if h.retry {
			early = 0
		}
		if h.extendAt.Sub(now) > early {
			return batch, h.extendAt
		}
		heap.Pop(&w.due)
		batch = append(batch, h)
	}
	return batch, now.Add(time.Hour)
}

// close gives up every lock still watched, since the Client is closing.
func (w *watchdog) close() {
	w.cancel()
	w.mu.Lock()
	held := make([]*holding, 0, len(w.held))
	for h := range w.held {
		held = append(held, h)
	}
	w.mu.Unlock()
	for _, h := range held {
		h.mutex.loseLock(h, fmt.Errorf("%w: %w", ErrLockLost, ErrClosed))
		w.forget(h)
	}
}

// extend runs one extension round for the locks in batch, and acts on what
// each lock's quorum says.
func (w *watchdog) extend(batch []*holding) {
	c := w.c
	keys := make([]any, len(batch))
	argv := make([]any, 0, 2*len(batch))
	timeout := time.Duration(0)
	for i, h := range batch {
		m := h.mutex
		keys[i] = m.args.key
		argv = append(argv, h.value, m.args.ttlMillis)
		timeout = max(timeout, m.cfg.perNodeTimeout())
	}
	timeout += time.Duration(len(batch)-1) * batchKeyTime
	call := extendCall(extendScript.prepare(keys, argv...), len(batch))

	// A lock is decided once a quorum has extended it, or once a quorum
	// can no longer do so; the round, once every lock is.
	oks := make([]int, len(batch))
	fails := make([]int, len(batch))
	undecided := len(batch)
	start := time.Now()
	r := c.launch(w.ctx, timeout, call, nil, nil)
	out := r.wait(w.ctx, func(_ int, rep reply, pendingHung int) bool {
		undecided = 0
		for j := range batch {
			if rep.ok && rep.extended[j] {
				oks[j]++
			} else {
				fails[j]++
			}
			if !decided(oks[j], fails[j], pendingHung, len(c.nodes)) {
				undecided++
			}
		}
		return undecided == 0
	})
	if w.ctx.Err() != nil {
		return // the Client is closing; close gives the locks up
	}

	retried := 0
	for j, h := range batch {
		m := h.mutex
		extended, refused := 0, 0
		for _, rep := range out.replies {
			switch {
			case !rep.answered || !rep.ok:
			case rep.extended[j]:
				extended++
			default:
				refused++
			}
		}
		interval := m.cfg.extendInterval()
		switch {
		case extended >= quorum(len(c.nodes)):
			until := w.extended(h, validityEnd(start, m.cfg.ttl, m.cfg.drift()))
			if refused > 0 {
				m.repair(h, until, func(i int) bool { return out.replies[i].answered && out.replies[i].ok && !out.replies[i].extended[j] })
			}
			w.reschedule(h, start.Add(interval), false)
		case refused >= quorum(len(c.nodes)):
			m.loseLock(h, fmt.Errorf("%w: %d of %d nodes no longer hold it", ErrLockLost, refused, len(c.nodes)))
			w.forget(h)
		default:
			// Too few answers: try again sooner, while validity remains.
			retried++
			w.reschedule(h, time.Now().Add(max(interval/4, time.Millisecond)), true)
		}
	}
	if retried > 0 {
		c.cfg.logger.Warn("redlock: extension failed; retrying", "locks", retried, "first", batch[0].mutex.name, "error", out.round.nodeErrors(out.replies))
	}
}

// extended moves h's validity on to until, if that is later, and returns
// the validity's end.
func (w *watchdog) extended(h *holding, until time.Time) time.Time {
	m := h.mutex
	m.mu.Lock()
	defer m.mu.Unlock()
	if until.After(h.until) {
		h.until = until
	}
	return h.until
}

func (w *watchdog) reschedule(h *holding, t time.Time, retry bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.schedule(h, t, retry)
}

// extendCall extends, on one node, the locks a prepared extend script names;
// count says how many.
func extendCall(extend prepared, count int) nodeCall {
	return func(ctx context.Context, n *node) reply {
		res, err := extend.run(ctx, n).Int64Slice()
		if err == nil && len(res) != count {
			err = fmt.Errorf("extend script returned %d values; want %d", len(res), count)
		}
		if err != nil {
			return reply{err: err}
		}
		extended := make([]bool, count)
		for j, v := range res {
			extended[j] = v == 1
		}
		return reply{ok: true, extended: extended}
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

// dueHeap orders held locks by their next extension.
type dueHeap []*holding

func (d dueHeap) Len() int           { return len(d) }
func (d dueHeap) Less(i, j int) bool { return d[i].extendAt.Before(d[j].extendAt) }
func (d dueHeap) Swap(i, j int) {
	d[i], d[j] = d[j], d[i]
	d[i].heapIndex = i
	d[j].heapIndex = j
}

func (d *dueHeap) Push(x any) {
	h := x.(*holding)
	h.heapIndex = len(*d)
	*d = append(*d, h)
}

func (d *dueHeap) Pop() any {
	old := *d
	h := old[len(old)-1]
	old[len(old)-1] = nil
	*d = old[:len(old)-1]
	h.heapIndex = -1
	return h
}

// repair sets the key again, with SET NX, on the nodes that said in a won
// extension round that they no longer have it (one restarted, say), so that
// one more node failure does not lose the lock. It does so only while the
// validity confirmed by that round lasts, and never over another holder's
// key. The calls are owned by the nodes and not waited for; one that lands
// after Unlock released the lock undoes itself.
func (m *Mutex) repair(h *holding, until time.Time, refused func(node int) bool) {
	c := m.client
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return
	}
	timeout := m.cfg.perNodeTimeout()
	for i, n := range c.nodes {
		if !refused(i) {
			continue
		}
		remaining := time.Until(until)
		if remaining <= timeout {
			return // too little validity left to be worth it
		}
		n.start(timeout, func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			// The key lives no longer than the validity confirmed by
			// the quorum; the next extension pushes it on.
			ok, err := n.client.SetNX(ctx, m.key, h.value, remaining.Truncate(time.Millisecond)).Result()
			if !ok || err != nil {
				return
			}
			if h.released.Load() {
				m.releaseCall(h.value, "", false)(ctx, n)
				return
			}
			m.cfg.logger.Info("redlock: lock repaired on a node that had lost it", "lock", m.name, "node", n.index, "addr", n.addr)
		})
	}
}

// loseLock records that h was lost and ends its held context with cause,
// unless Unlock has already stopped watching it or it was lost before.
func (m *Mutex) loseLock(h *holding, cause error) {
	m.mu.Lock()
	if h.stopped || h.lost != nil {
		m.mu.Unlock()
		return
	}
	h.lost = cause
	m.mu.Unlock()
	h.cancel(cause)
	level := slog.LevelWarn
	if errors.Is(cause, ErrClosed) {
		level = slog.LevelInfo
	}
	m.cfg.logger.Log(context.Background(), level, "redlock: lock lost", "lock", m.name, "cause", cause)
}
