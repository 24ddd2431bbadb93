package redlock

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
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
	at     time.Time // when the library handed it to go-redis
	name   string    // "set", "evalsha", ...
	kind   string    // acquire, fence, release, extend, enqueue, repair, or the command name
	key    string    // the first key, if any
	values []string  // the holders' values it names
	px     int64     // SET: the PX argument, or 0
	round  *round    // the round it belongs to, if it was sent as part of one
	result string    // what the caller got back, once it did
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

// faultHook is one node's fault layer.
type faultHook struct {
	node int
	rng  *rand.Rand // orders the commands a paused node runs at once when it resumes

	mu      sync.Mutex
	faults  []*fault
	paused  bool
	held    []*heldCommand // commands sent while paused, run when it resumes
	serial  sync.Mutex     // runs delayed commands one at a time, in order
	queued  int            // commands waiting for serial: later ones queue behind them
	calls   []call
	onRun   func(c call, at time.Time) // called when the server runs a command
	running sync.WaitGroup             // commands run after their caller stopped waiting
}

// heldCommand is a command waiting for a paused node.
type heldCommand struct {
	run  func()
	done chan struct{}
}

func newFaultHook(node int, seed uint64) *faultHook {
	return &faultHook{node: node, rng: rand.New(rand.NewPCG(seed, uint64(node)))}
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

// pause holds every command from now on until resume.
func (h *faultHook) pause() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.paused = true
}

// resume runs the commands held while the node was paused, in an order
// drawn from the hook's seed, as a server thawed from SIGSTOP reads every
// socket that became readable meanwhile; commands sent after that run
// after them.
func (h *faultHook) resume() { h.resumeOrdered(nil) }

// resumeOrdered is resume with the held commands run in the order order
// gives (nil: shuffled).
func (h *faultHook) resumeOrdered(order func(held []*heldCommand)) {
	for {
		h.mu.Lock()
		batch := h.held
		h.held = nil
		if len(batch) == 0 {
			h.paused = false
			h.mu.Unlock()
			return
		}
		if order != nil {
			order(batch)
			order = nil
		} else {
			h.rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
		}
		h.mu.Unlock()
		for _, c := range batch {
			c.run()
		}
		for _, c := range batch {
			close(c.done)
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

// wait waits for commands still running after their callers gave up.
func (h *faultHook) wait() {
	h.resume()
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
		paused := h.paused || h.queued > 0
		h.mu.Unlock()
		err := h.process(ctx, next, cmd, c, f, paused)
		h.mu.Lock()
		h.calls[index].result = replyText(cmd, err)
		h.mu.Unlock()
		return err
	}
}

func (h *faultHook) process(ctx context.Context, next redis.ProcessHook, cmd redis.Cmder, c call, f *fault, paused bool) error {
	switch {
	case f != nil && f.fail != nil:
		h.sleep(ctx, f.before)
		return f.fail
	case f != nil && f.eof:
		if err := h.run(ctx, next, cmd, c); err != nil {
			return err
		}
		return io.EOF
	case f == nil && !paused:
		return h.run(ctx, next, cmd, c)
	}
	return h.late(ctx, next, cmd, c, f)
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

// run runs cmd on the server now.
func (h *faultHook) run(ctx context.Context, next redis.ProcessHook, cmd redis.Cmder, c call) error {
	err := next(ctx, cmd)
	h.ran(c)
	return err
}

func (h *faultHook) ran(c call) {
	h.mu.Lock()
	onRun := h.onRun
	h.mu.Unlock()
	if onRun != nil {
		onRun(c, time.Now())
	}
}

// late runs a copy of cmd on the server when the fault (or a pause) lets
// it, whether or not the caller is still waiting, and hands the result back
// if the caller is.
func (h *faultHook) late(ctx context.Context, next redis.ProcessHook, cmd redis.Cmder, c call, f *fault) error {
	if f == nil {
		f = &fault{}
	}
	shadow := redis.NewCmd(ctx, cmd.Args()...)
	detached := context.WithoutCancel(ctx)
	result := make(chan error, 1)
	sentAt := time.Now()
	h.running.Go(func() {
		execute := func() {
			if f.before > 0 {
				time.Sleep(time.Until(sentAt.Add(f.before)))
			}
			if !f.notBefore.IsZero() {
				time.Sleep(time.Until(f.notBefore))
			}
			runCtx, cancel := context.WithTimeout(detached, 5*time.Second)
			shadow.SetErr(next(runCtx, shadow))
			cancel()
			h.ran(c)
		}
		h.mu.Lock()
		if h.paused {
			held := &heldCommand{run: execute, done: make(chan struct{})}
			h.held = append(h.held, held)
			h.mu.Unlock()
			<-held.done
		} else {
			h.queued++
			h.mu.Unlock()
			// Delayed commands run one at a time, in the order sent, and
			// the commands sent after them wait their turn.
			h.serial.Lock()
			execute()
			h.serial.Unlock()
			h.mu.Lock()
			h.queued--
			h.mu.Unlock()
		}
		if f.drop {
			return
		}
		time.Sleep(f.after)
		result <- shadow.Err()
	})
	select {
	case err := <-result:
		copyReply(cmd, shadow)
		return err
	case <-ctx.Done():
		return ctx.Err()
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
	default:
		panic(fmt.Sprintf("fault layer: cannot copy a reply into %T", cmd))
	}
	cmd.SetErr(err)
}

// classify names a command the library sends.
func classify(node int, ctx context.Context, cmd redis.Cmder) call {
	args := cmd.Args()
	c := call{node: node, at: time.Now(), name: strings.ToLower(cmd.Name())}
	c.round, _ = ctx.(*round)
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
			if c.round != nil && c.round.spec.kind == repairRound {
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
			for i := 0; i < len(argv); i += 2 {
				c.values = append(c.values, fmt.Sprint(argv[i]))
			}
		case "acquire", "fence", "release", "repair":
			if len(argv) > 0 {
				c.values = []string{fmt.Sprint(argv[0])}
			}
		case "forget":
			for _, v := range argv {
				c.values = append(c.values, fmt.Sprint(v))
			}
		}
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
		script *redis.Script
		source string
	}{
		{"acquire", acquireScript, acquireSource},
		{"fence", fenceScript, fenceSource},
		{"release", releaseScript, releaseSource},
		{"extend", extendScript, extendSource},
		{"enqueue", enqueueScript, enqueueSource},
		{"identify", identifyScript, identifySource},
		{"forget", forgetScript, forgetSource},
	} {
		if shaOrSource == s.script.Hash() || shaOrSource == s.source {
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
