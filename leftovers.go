package redlock

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// leftovers are holds of ours that may still be on a node although nothing
// holds them: a grant or a repair whose reply never came back, or a release
// that got no answer. Such a command may sit unread in a paused server while
// a release sent after it runs first. Once the node answers a command sent
// afterwards, it has run whatever it had been sent before; a release sent
// from then on, and answered, is the last word. Leftovers of one key are
// released together, with one call for all their values, made as the
// lease's kind says (its forgetting).
type leftovers struct {
	count atomic.Int32 // len(list), read on every answer

	mu       sync.Mutex
	list     []*leftover              // oldest first
	byID     map[leftoverID]*leftover // the same, to find one at once
	flushing bool
	timeout  time.Duration // of the calls that release them
}

// forgetting is how a kind releases the holds it may have left under one
// key: script runs with the key as KEYS[1] and the values as ARGV, and
// deletes the hold of any of them; with also, a key that goes with the
// hold (an Election's record of its leader) is KEYS[2], deleted with it.
type forgetting struct {
	script *script
	key    string
	also   string
}

// leftoverID names a leftover: a key, how to release it, and a value it
// may hold.
type leftoverID struct {
	forgetting
	value string
}

// leftover is one key of ours that may still be on a node.
type leftover struct {
	leftoverID
	since time.Time // when it was remembered
	proof time.Time // when the node first answered a command sent after since; zero until then
}

// maxLeftovers bounds the keys remembered per node, for a node that never
// answers again; the oldest are forgotten first, and expire with their TTL.
const maxLeftovers = 4096

// remember notes that value may still be held on n under the key of f;
// calls to release it wait at most timeout.
func (n *node) remember(f forgetting, value string, timeout time.Duration) {
	l := &n.leftovers
	id := leftoverID{f, value}
	l.mu.Lock()
	defer l.mu.Unlock()
	if o := l.byID[id]; o != nil {
		o.since, o.proof = time.Now(), time.Time{} // the newest doubt counts
		return
	}
	if len(l.list) == maxLeftovers {
		delete(l.byID, l.list[0].leftoverID)
		l.list = l.list[1:]
	}
	if l.byID == nil {
		l.byID = make(map[leftoverID]*leftover)
	}
	o := &leftover{leftoverID: id, since: time.Now()}
	l.list = append(l.list, o)
	l.byID[id] = o
	l.timeout = max(l.timeout, timeout)
	l.count.Store(int32(len(l.list)))
}

// proven records that n answered a call sent no earlier than sent, and
// releases, in the background, the leftovers remembered before sent.
func (l *leftovers) proven(n *node, sent time.Time) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	due := false
	for _, o := range l.list {
		if o.proof.IsZero() && sent.After(o.since) {
			o.proof = now
		}
		due = due || !o.proof.IsZero()
	}
	if !due || l.flushing {
		return
	}
	l.flushing = true
	timeout := l.timeout
	if !n.spawn(timeout, func() { l.flush(n, time.Now().Add(2*timeout)) }) {
		l.flushing = false
	}
}

// flush releases the leftovers whose proof has come, one call per key, and
// forgets those that the node answered. It stops at the first call that
// gets no answer (the node has stopped answering) and at deadline; the rest
// wait for the next proof.
func (l *leftovers) flush(n *node, deadline time.Time) {
	l.mu.Lock()
	byKey := make(map[forgetting][]*leftover)
	var keys []forgetting
	for _, o := range l.list {
		if o.proof.IsZero() {
			continue
		}
		if byKey[o.forgetting] == nil {
			keys = append(keys, o.forgetting)
		}
		byKey[o.forgetting] = append(byKey[o.forgetting], o)
	}
	timeout := l.timeout
	l.mu.Unlock()
	done := forgetAll(n, keys, byKey, timeout, deadline)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range done {
		delete(l.byID, o.leftoverID)
	}
	l.list = slices.DeleteFunc(l.list, func(o *leftover) bool { return l.byID[o.leftoverID] != o })
	l.count.Store(int32(len(l.list)))
	l.flushing = false
	// A leftover proven while this flush ran, for a key it did not
	// cover, would otherwise wait for the node's next answer.
	for _, o := range l.list {
		if !o.proof.IsZero() && byKey[o.forgetting] == nil {
			l.flushing = true
			if !n.spawn(timeout, func() { l.flush(n, time.Now().Add(2*timeout)) }) {
				l.flushing = false
			}
			return
		}
	}
}

// flushParallel bounds the releases of leftovers one flush has in flight
// on a node at once.
const flushParallel = 8

// forgetAll releases the leftovers of keys on n, flushParallel keys at a
// time, each call bounded by timeout and all by deadline, and returns
// those released. It starts no more calls once one found the node not
// answering.
func forgetAll(n *node, keys []forgetting, byKey map[forgetting][]*leftover, timeout time.Duration, deadline time.Time) []*leftover {
	var (
		mu    sync.Mutex
		done  []*leftover
		down  atomic.Bool
		calls sync.WaitGroup
		slots = make(chan struct{}, flushParallel)
	)
	for _, key := range keys {
		slots <- struct{}{}
		if down.Load() || !time.Now().Before(deadline) {
			break
		}
		calls.Go(func() {
			defer func() { <-slots }()
			ctx, cancel := context.WithDeadline(context.Background(), earliest(deadline, time.Now().Add(timeout)))
			err := key.forget(ctx, n, byKey[key])
			cancel()
			switch {
			case err == nil:
				mu.Lock()
				done = append(done, byKey[key]...)
				mu.Unlock()
			case !fromServer(err):
				down.Store(true)
				fallthrough
			default:
				n.failed(err)
			}
		})
	}
	calls.Wait()
	return done
}

// forget releases, on n, the hold of f's key by any of list.
func (f forgetting) forget(ctx context.Context, n *node, list []*leftover) error {
	argv := make([]any, len(list))
	for i, o := range list {
		argv[i] = o.value
	}
	keys := []any{f.key}
	if f.also != "" {
		keys = append(keys, f.also)
	}
	return prepare(f.script, keys, argv...).run(ctx, n, nil).Err()
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// sweep makes a last attempt, at Close, once no call to n is in flight, to
// release n's leftovers: an answer to PING is the proof, then each gets a
// release. It tries PING once a timeout until an answer comes, for three
// timeouts at most, then releases for two at most; then it forgets them: a
// key on a node that does not answer expires with its TTL.
func (n *node) sweep(timeout time.Duration) {
	if n.leftovers.count.Load() == 0 {
		return
	}
	deadline := time.Now().Add(3 * timeout)
	answered := false
	for !answered && time.Now().Before(deadline) {
		ctx, cancel := context.WithDeadline(context.Background(), earliest(deadline, time.Now().Add(timeout)))
		err := n.client.Ping(ctx).Err()
		answered = fromServer(err)
		if err != nil {
			n.failed(err)
		}
		if !answered {
			<-ctx.Done() // a refused connection fails at once: try again a timeout later
		}
		cancel()
	}
	l := &n.leftovers
	if answered {
		now := time.Now()
		l.mu.Lock()
		for _, o := range l.list {
			if o.proof.IsZero() {
				o.proof = now
			}
		}
		l.mu.Unlock()
		l.flush(n, time.Now().Add(2*timeout))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.list, l.byID = nil, nil
	l.count.Store(0)
}
