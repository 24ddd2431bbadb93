package redlock

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// This file holds the fault layer the tests put between the library and the
// embedded servers: a go-redis hook per node that can delay, drop or fail
// commands, break a connection after a command ran, or hold every command
// while the node is paused, as a frozen Redis does. It also records every
// command the library sends.

// call is a command as the fault layer sees it.
type call struct {
	node   int
	at     time.Time   // when the library handed it to go-redis
	name   string      // "set", "evalsha", ...
	kind   string      // acquire, fence, release, extend, enqueue, repair, or the command name
	key    string      // the first key, if any
	values []string    // the holders' values it names
	px     int64       // SET: the PX argument, or 0
	record string      // elect: the leader's record it writes
	round  tracedRound // the round it belongs to, if it was sent as part of one
	result string      // what the caller got back, once it did
	back   time.Time   // when the caller got it
	ran    string      // when the server ran it, and what it answered
}

// fault is what happens to the commands it matches.
type fault struct {
	match     func(c call) bool // nil: every command
	before    time.Duration     // the server runs the command this long after it is sent, in order
	notBefore time.Time         // ...or no earlier than this
	after     time.Duration     // the reply comes back this long after the command ran
	drop      bool              // the command runs, but its reply never comes back
	fail      error             // the command does not run; this comes back instead
	eof       bool              // the command runs, then its connection breaks (io.EOF)
	times     int               // how many commands it applies to; 0: all
}

// faultHook is one node's fault layer. The commands the library sends reach
// the server in the order they were sent, one at a time, as a
// single-threaded Redis reads them: an executor goroutine runs them from a
// queue. A paused node runs nothing; when it resumes, it runs what it was
// sent meanwhile in an order drawn from the hook's seed (a thawed server
// reads every socket that became readable at once), and then what comes
// after, in order. The caller of a command waits for its reply, or for its
// context, whichever comes first: a command whose caller gave up still
// runs in its turn.
type faultHook struct {
	node int
	rng  *rand.Rand // orders what a paused node runs when it resumes

	mu       sync.Mutex
	faults   []*fault
	paused   bool
	queue    []*queued                  // sent, not yet run, in order
	batch    int                        // the first batch of queue to run in shuffled order
	order    func(batch []*queued)      // orders that batch, if not shuffled
	wake     chan struct{}              // the executor has something to do
	stopping bool                       // the executor ends once the queue is empty
	started  bool                       // the executor runs
	calls    []call                     // every command sent
	onRun    func(c call, at time.Time) // called when the server runs a command
	running  sync.WaitGroup             // the executor, and replies delivered late
}

// queued is a command waiting for the server.
type queued struct {
	run       func()
	notBefore time.Time
	kind      string // the call's kind, as classify names it
}

func newFaultHook(node int, seed uint64) *faultHook {
	return &faultHook{node: node, rng: rand.New(rand.NewPCG(seed, uint64(node))), wake: make(chan struct{}, 1)}
}

// add applies f to the commands sent from now on.
func (h *faultHook) add(f *fault) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faults = append(h.faults, f)
}

// remove takes f away.
func (h *faultHook) remove(f *fault) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, g := range h.faults {
		if g == f {
			h.faults = append(h.faults[:i:i], h.faults[i+1:]...)
			return
		}
	}
}

// clear removes every fault.
func (h *faultHook) clear() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faults = nil
}

// pause stops the node from running anything until resume.
func (h *faultHook) pause() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.paused = true
}

// resume lets the node run again: first what it was sent while paused, in
// an order drawn from the hook's seed.
func (h *faultHook) resume() { h.resumeOrdered(nil) }

// resumeOrdered is resume with the commands sent while paused run in the
// order order gives them (nil: shuffled).
func (h *faultHook) resumeOrdered(order func(batch []*queued)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.paused {
		return
	}
	h.paused = false
	h.batch, h.order = len(h.queue), order
	h.signal()
}

// signal wakes the executor. h.mu is held.
func (h *faultHook) signal() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// enqueue queues q for the server, starting the executor if need be. It
// reports false once the executor has stopped: q then runs at once.
func (h *faultHook) enqueue(q *queued) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopping {
		return false
	}
	h.queue = append(h.queue, q)
	if !h.started {
		h.started = true
		h.running.Go(h.execute)
	}
	h.signal()
	return true
}

// execute runs the queued commands, in turn, until the hook stops.
func (h *faultHook) execute() {
	for {
		h.mu.Lock()
		for (len(h.queue) == 0 || h.paused) && !(h.stopping && len(h.queue) == 0) {
			h.mu.Unlock()
			<-h.wake
			h.mu.Lock()
		}
		if len(h.queue) == 0 {
			h.mu.Unlock()
			return
		}
		n := max(h.batch, 1)
		run := append([]*queued(nil), h.queue[:n]...)
		h.queue = h.queue[n:]
		if h.batch > 0 {
			if h.order != nil {
				h.order(run)
			} else {
				h.rng.Shuffle(len(run), func(i, j int) { run[i], run[j] = run[j], run[i] })
			}
			h.batch, h.order = 0, nil
		}
		h.mu.Unlock()
		for _, q := range run {
			time.Sleep(time.Until(q.notBefore))
			q.run()
		}
	}
}

// setOnRun sets the function called when the server runs a command.
func (h *faultHook) setOnRun(f func(c call, at time.Time)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.onRun = f
}

// sent returns the commands sent so far that match.
func (h *faultHook) sent(match func(c call) bool) []call {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []call
	for _, c := range h.calls {
		if match == nil || match(c) {
			out = append(out, c)
		}
	}
	return out
}

// wait lets the node run what it was sent, stops the executor, and waits
// for the replies still to be delivered.
func (h *faultHook) wait() {
	h.resume()
	h.mu.Lock()
	h.stopping = true
	h.signal()
	h.mu.Unlock()
	h.running.Wait()
}

func (h *faultHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *faultHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *faultHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c := classify(h.node, ctx, cmd)
		switch c.name {
		case "hello", "client", "auth", "select":
			return next(ctx, cmd) // setting up a connection: left alone
		}
		h.mu.Lock()
		index := len(h.calls)
		h.calls = append(h.calls, c)
		f := h.pick(c)
		h.mu.Unlock()
		err := h.process(ctx, next, cmd, c, f, index)
		h.mu.Lock()
		h.calls[index].result, h.calls[index].back = replyText(cmd, err), time.Now()
		h.mu.Unlock()
		return err
	}
}

// process sends cmd to the server through the queue, as f has it, and waits
// for its reply or for ctx.
func (h *faultHook) process(ctx context.Context, next redis.ProcessHook, cmd redis.Cmder, c call, f *fault, index int) error {
	if f == nil {
		f = &fault{}
	}
	if f.fail != nil {
		h.sleep(ctx, f.before)
		return f.fail
	}
	shadow := redis.NewCmd(ctx, cmd.Args()...)
	detached := context.WithoutCancel(ctx)
	result := make(chan error, 1)
	notBefore := time.Now().Add(f.before)
	if f.notBefore.After(notBefore) {
		notBefore = f.notBefore
	}
	q := &queued{notBefore: notBefore, kind: c.kind, run: func() {
		runCtx, cancel := context.WithTimeout(detached, 5*time.Second)
		shadow.SetErr(next(runCtx, shadow))
		cancel()
		h.mu.Lock()
		h.calls[index].ran = fmt.Sprintf("ran %v after it was sent: %s", time.Since(c.at).Round(time.Microsecond), replyText(shadow, shadow.Err()))
		h.mu.Unlock()
		h.ran(c)
		switch {
		case f.drop:
		case f.after > 0:
			h.running.Go(func() {
				time.Sleep(f.after)
				result <- shadow.Err()
			})
		default:
			result <- shadow.Err()
		}
	}}
	if !h.enqueue(q) {
		q.run()
	}
	select {
	case err := <-result:
		copyReply(cmd, shadow)
		if err == nil && f.eof {
			return io.EOF
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pick returns the first fault that matches c, and counts it. h.mu is held.
func (h *faultHook) pick(c call) *fault {
	for i, f := range h.faults {
		if f.match != nil && !f.match(c) {
			continue
		}
		if f.times > 0 {
			f.times--
			if f.times == 0 {
				h.faults = append(h.faults[:i:i], h.faults[i+1:]...)
			}
		}
		return f
	}
	return nil
}

func (h *faultHook) sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

func (h *faultHook) ran(c call) {
	h.mu.Lock()
	onRun := h.onRun
	h.mu.Unlock()
	if onRun != nil {
		onRun(c, time.Now())
	}
}

// copyReply gives cmd the reply shadow, a *redis.Cmd, received.
func copyReply(cmd redis.Cmder, shadow *redis.Cmd) {
	err := shadow.Err()
	switch cmd := cmd.(type) {
	case *redis.Cmd:
		cmd.SetVal(shadow.Val())
	case *redis.StatusCmd:
		s, _ := shadow.Val().(string)
		cmd.SetVal(s)
	case *redis.StringCmd:
		s, _ := shadow.Val().(string)
		cmd.SetVal(s)
	case *redis.BoolCmd:
		if err == redis.Nil {
			err = nil
		}
		cmd.SetVal(shadow.Val() == "OK" || shadow.Val() == int64(1))
	case *redis.IntCmd:
		n, _ := shadow.Val().(int64)
		cmd.SetVal(n)
	case *redis.BoolSliceCmd:
		list, _ := shadow.Val().([]any)
		bools := make([]bool, len(list))
		for i, v := range list {
			bools[i] = v == int64(1)
		}
		cmd.SetVal(bools)
	default:
		panic(fmt.Sprintf("fault layer: cannot copy a reply into %T", cmd))
	}
	cmd.SetErr(err)
}

// tracedRound is what the fault layer reads of the round a command was
// sent in: the round is its context.
type tracedRound interface {
	traceStart() time.Time
	// traceLease is the lease the round is for, and what for: "acquire",
	// "release" or "repair"; nil and "" for other rounds.
	traceLease() (*lease, string)
	// traceConcluded is when the round's wait ended, or zero.
	traceConcluded() time.Time
	// gaveUp reports whether the round gave up on node i: its wait timed
	// out, or node i's call did.
	gaveUp(i int) bool
}

func (r *round[R]) traceStart() time.Time { return r.start }

func (r *round[R]) traceLease() (*lease, string) {
	switch h := any(r.spec.heard).(type) {
	case *granting:
		return (*lease)(h), "acquire"
	case *releasing:
		return (*lease)(h), "release"
	case *repairing:
		return (*lease)(h), "repair"
	}
	return nil, ""
}

func (r *round[R]) traceConcluded() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.concluded
}

func (r *round[R]) gaveUp(i int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.timedOut || timedOut(r.replies[i].err)
}

// classify names a command the library sends.
func classify(node int, ctx context.Context, cmd redis.Cmder) call {
	args := cmd.Args()
	c := call{node: node, at: time.Now(), name: strings.ToLower(cmd.Name())}
	c.round, _ = ctx.(tracedRound)
	str := func(i int) string {
		if i < len(args) {
			return fmt.Sprint(args[i])
		}
		return ""
	}
	switch c.name {
	case "set":
		c.kind, c.key, c.values = "set", str(1), []string{str(2)}
		for i := 3; i+1 < len(args); i++ {
			if strings.EqualFold(str(i), "px") {
				fmt.Sscan(str(i+1), &c.px)
			}
		}
		if len(args) > 3 && strings.EqualFold(str(len(args)-1), "nx") {
			c.kind = "acquire"
			if _, purpose := c.round.traceLease(); purpose == "repair" {
				c.kind = "repair"
			}
		}
	case "evalsha", "eval":
		c.kind = scriptKind(str(1))
		var nkeys int
		fmt.Sscan(str(2), &nkeys)
		c.key = str(3)
		argv := args[min(3+nkeys, len(args)):]
		switch c.kind {
		case "extend":
			for i := 0; i < len(argv); i += 3 {
				c.values = append(c.values, fmt.Sprint(argv[i]))
			}
		case "acquire", "fence", "release", "repair", "elect":
			if len(argv) > 0 {
				c.values = []string{fmt.Sprint(argv[0])}
			}
			if c.kind == "repair" && len(argv) > 1 {
				fmt.Sscan(fmt.Sprint(argv[1]), &c.px)
			}
			if c.kind == "elect" && len(argv) > 2 {
				c.record = fmt.Sprint(argv[2])
			}
		case "forget":
			for _, v := range argv {
				c.values = append(c.values, fmt.Sprint(v))
			}
		}
	case "script": // SCRIPT LOAD and EXISTS: the identity check
		c.kind = "identify"
	default:
		c.kind = c.name
	}
	return c
}

// isKind matches the commands of one kind.
func isKind(kinds ...string) func(c call) bool {
	return func(c call) bool {
		for _, k := range kinds {
			if c.kind == k {
				return true
			}
		}
		return false
	}
}

// faultyServers starts n embedded servers, each behind a fault layer.
func faultyServers(t testing.TB, n int, seed uint64) ([]*miniredis.Miniredis, []redis.UniversalClient, []*faultHook) {
	t.Helper()
	mrs, clients := servers(t, n)
	hooks := make([]*faultHook, n)
	for i, rc := range clients {
		hooks[i] = newFaultHook(i, seed)
		rc.AddHook(hooks[i])
	}
	t.Cleanup(func() {
		for _, h := range hooks {
			h.wait()
		}
	})
	return mrs, clients, hooks
}

// scriptKind names the library's script with the given hash or source.
func scriptKind(shaOrSource string) string {
	for _, s := range []struct {
		kind   string
		script *script
	}{
		{"acquire", acquireScript},
		{"acquire", semAcquireScript},
		{"fence", fenceScript},
		{"release", releaseScript},
		{"extend", extendScript},
		{"repair", semRepairScript},
		{"enqueue", enqueueScript},
		{"forget", forgetScript},
		{"elect", electScript},
		{"leader", leaderScript},
	} {
		if shaOrSource == s.script.Hash() || shaOrSource == s.script.source {
			return s.kind
		}
	}
	return "script"
}

// replyText shows what a command got back.
func replyText(cmd redis.Cmder, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	switch cmd := cmd.(type) {
	case *redis.Cmd:
		return fmt.Sprint(cmd.Val())
	case *redis.StatusCmd:
		return cmd.Val()
	}
	return "ok"
}

// slowSubConn delays what a connection reads by delay once it has sent a
// SUBSCRIBE: a pubsub connection's messages arrive late (a retransmit, a
// busy link), while the command connections are not slowed. It reads the
// connection in a goroutine of its own, which ends when the connection is
// closed, and keeps the read deadline itself.
type slowSubConn struct {
	net.Conn
	delay    time.Duration
	sub      atomic.Bool
	start    sync.Once
	chunks   chan slowChunk
	pending  []byte
	mu       sync.Mutex
	deadline time.Time
}

type slowChunk struct {
	data []byte
	at   time.Time
	err  error
}

func (c *slowSubConn) Write(p []byte) (int, error) {
	if bytes.Contains(bytes.ToLower(p), []byte("subscribe")) {
		c.sub.Store(true)
	}
	return c.Conn.Write(p)
}

func (c *slowSubConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *slowSubConn) SetReadDeadline(t time.Time) error {
	if !c.sub.Load() {
		return c.Conn.SetReadDeadline(t)
	}
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

func (c *slowSubConn) Read(p []byte) (int, error) {
	if !c.sub.Load() {
		return c.Conn.Read(p)
	}
	c.start.Do(func() {
		_ = c.Conn.SetReadDeadline(time.Time{})
		c.chunks = make(chan slowChunk, 1024)
		go func() {
			for {
				buf := make([]byte, 4096)
				n, err := c.Conn.Read(buf)
				c.chunks <- slowChunk{data: buf[:n], at: time.Now(), err: err}
				if err != nil {
					return
				}
			}
		}()
	})
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	c.mu.Lock()
	deadline := c.deadline
	c.mu.Unlock()
	var expired <-chan time.Time
	if !deadline.IsZero() {
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case ch := <-c.chunks:
		time.Sleep(time.Until(ch.at.Add(c.delay)))
		n := copy(p, ch.data)
		c.pending = ch.data[n:]
		return n, ch.err
	case <-expired:
		return 0, os.ErrDeadlineExceeded
	}
}
