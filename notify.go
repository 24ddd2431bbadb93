package redlock

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// notifier wakes waiters when a holder releases a lock. A waiter's id starts
// with its Client's id; the release script pops the id at the head of the
// lock's queue and publishes it on that Client's own channel, so that each
// wake-up reaches the one Client concerned, however many wait. The notifier
// keeps one subscription per node, from the first wait until Close, and
// passes each message to the listener of the waiter it names. Messages can
// be lost (a node down, a reconnect, a woken waiter that has died), so
// waiters also retry on a timer.
type notifier struct {
	client  *Client
	id      string // the Client's id, which starts its waiters' ids
	channel string // the Client's channel

	mu        sync.Mutex
	listeners map[string]*listener // by waiter id
	subs      []*subscription      // by node; nil until the first wait
	running   sync.WaitGroup
	// changed is closed and replaced when a subscription's state changes.
	changed chan struct{}
	// watches are the watches of other channels, by channel: a channel
	// is subscribed to on every node while it has one.
	watches map[string]map[*watch]struct{}
	// watching orders the SUBSCRIBE and UNSUBSCRIBE of watched channels
	// as the watches begin and stop; it is taken before mu.
	watching sync.Mutex
}

// watch is one registration to hear what is published on a channel other
// than the Client's own (an Election's observers). C receives a value
// when a message comes; it holds one pending notice.
type watch struct {
	C       chan struct{}
	channel string
	n       *notifier
}

// subscription is the notifier's subscription on one node, run by one
// goroutine. Its flags are guarded by the notifier's mu.
type subscription struct {
	node   *node
	pubsub *redis.PubSub
	// confirmed: the server confirmed the subscription on the connection
	// in use, and no error has been seen on it since.
	confirmed bool
	// silent: nothing, not even a PING's answer, came for a health
	// interval; a release may not reach the Client through this node.
	silent bool
	// denied: the server refused the subscription (an ACL without channel
	// permissions); wake-ups cannot come through this node.
	denied bool
}

// listening reports whether wake-ups published on the node reach the
// Client.
func (s *subscription) listening() bool { return s.confirmed && !s.silent }

// listener is one waiter's registration. C receives a value when a release
// names the waiter; it holds one pending wake-up.
type listener struct {
	C      chan struct{}
	waiter string
	n      *notifier
	// from: the nodes whose wake-ups came since the last take, each of
	// which took the waiter out of its queue to wake it. Guarded by n.mu.
	from []bool
}

// waiterSeparator ends a Client's id in its waiters' ids; the release script
// finds the channel to publish on by it.
const waiterSeparator = "."

// wakeChannelPrefix starts the name of every Client's channel.
const wakeChannelPrefix = "redlock:wake:"

// healthInterval is how long a subscription may be silent before it is
// sent a PING, and, if that is not answered within as long again, counted
// out until something comes.
const healthInterval = 3 * time.Second

// Back-off between attempts to subscribe again after an error, and while the
// server denies the subscription.
const (
	minResubscribe    = 50 * time.Millisecond
	maxResubscribe    = time.Second
	deniedResubscribe = 30 * time.Second
)

func newNotifier(c *Client) *notifier {
	id := rand.Text()
	return &notifier{
		client:    c,
		id:        id,
		channel:   wakeChannelPrefix + id,
		listeners: make(map[string]*listener),
		changed:   make(chan struct{}),
		watches:   make(map[string]map[*watch]struct{}),
	}
}

// newWaiter returns a new waiter id of this Client.
func (n *notifier) newWaiter() string {
	return n.id + waiterSeparator + rand.Text()
}

// listen registers waiter, subscribing on every node at the Client's first
// wait. The caller must call unregister.
func (n *notifier) listen(waiter string) *listener {
	l := &listener{C: make(chan struct{}, 1), waiter: waiter, n: n}
	n.client.mu.RLock()
	defer n.client.mu.RUnlock()
	if n.client.isClosing() {
		return l // never woken by a message; the waiter's timer still runs
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.subs == nil {
		n.subscribe()
	}
	n.listeners[waiter] = l
	return l
}

// take takes the pending wake-up, if there is one, and reports whether
// there was. It forgets the nodes the wake-ups came from: the waiter is
// about to join their queues again.
func (l *listener) take() bool {
	l.n.mu.Lock()
	l.from = nil
	l.n.mu.Unlock()
	select {
	case <-l.C:
		return true
	default:
		return false
	}
}

// wokenBy returns the nodes whose wake-ups came since the last take, and
// how many they are.
func (l *listener) wokenBy() (from []bool, count int) {
	l.n.mu.Lock()
	defer l.n.mu.Unlock()
	for _, bit := range l.from {
		if bit {
			count++
		}
	}
	return append([]bool(nil), l.from...), count
}

// unregister stops passing wake-ups to the waiter.
func (l *listener) unregister() {
	n := l.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listeners[l.waiter] == l {
		delete(n.listeners, l.waiter)
	}
}

// watch registers to hear the messages published on channel, subscribing
// to it on every node (and to the Client's channel, at the first of
// either) if nothing else watches it. The caller must call stop. Messages
// can be lost, as wake-ups can: a watcher also polls.
func (n *notifier) watch(channel string) *watch {
	w := &watch{C: make(chan struct{}, 1), channel: channel, n: n}
	n.watching.Lock()
	defer n.watching.Unlock()
	n.client.mu.RLock()
	if n.client.isClosing() {
		n.client.mu.RUnlock()
		return w // never told; the watcher's timer still runs
	}
	n.mu.Lock()
	if n.subs == nil {
		n.subscribe()
	}
	first := len(n.watches[channel]) == 0
	if first {
		n.watches[channel] = make(map[*watch]struct{})
	}
	n.watches[channel][w] = struct{}{}
	subs := n.subs
	n.mu.Unlock()
	n.client.mu.RUnlock()
	if first {
		n.eachSubscription(subs, func(ctx context.Context, p *redis.PubSub) error { return p.Subscribe(ctx, channel) })
	}
	return w
}

// stop ends the watch, unsubscribing from its channel if nothing else
// watches it.
func (w *watch) stop() {
	n := w.n
	n.watching.Lock()
	defer n.watching.Unlock()
	n.mu.Lock()
	watches, ok := n.watches[w.channel]
	if ok {
		delete(watches, w)
	}
	last := ok && len(watches) == 0
	if last {
		delete(n.watches, w.channel)
	}
	subs := n.subs
	n.mu.Unlock()
	if last {
		n.eachSubscription(subs, func(ctx context.Context, p *redis.PubSub) error { return p.Unsubscribe(ctx, w.channel) })
	}
}

// eachSubscription runs do on the subscription of every node at once,
// each bounded by the node timeout. go-redis remembers the channels of a
// PubSub even when a command fails, and subscribes to them again when it
// reconnects.
func (n *notifier) eachSubscription(subs []*subscription, do func(context.Context, *redis.PubSub) error) {
	var calls sync.WaitGroup
	for _, sub := range subs {
		calls.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), n.client.cfg.perNodeTimeout())
			defer cancel()
			_ = do(ctx, sub.pubsub)
		})
	}
	calls.Wait()
}

// tell passes a message on channel to its watches.
func (n *notifier) tell(channel string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for w := range n.watches[channel] {
		select {
		case w.C <- struct{}{}:
		default: // a notice is already pending
		}
	}
}

// subscribe subscribes to the Client's channel on every node. n.mu and
// client.mu (read) are held.
func (n *notifier) subscribe() {
	for _, nd := range n.client.nodes {
		sub := &subscription{node: nd, pubsub: nd.client.Subscribe(context.Background())}
		n.subs = append(n.subs, sub)
		n.running.Go(func() { n.run(sub) })
	}
}

// run keeps one node's subscription and forwards its messages until the
// Client closes. It reads the connection itself, rather than through
// go-redis's channel, to see what go-redis does not report there: a
// dropped connection (until the server confirms the subscription again),
// silence, and a denied subscription.
func (n *notifier) run(sub *subscription) {
	ctx := context.Background()
	resubscribe := func() {
		subCtx, cancel := context.WithTimeout(ctx, n.client.cfg.perNodeTimeout())
		_ = sub.pubsub.Subscribe(subCtx, n.channel)
		cancel()
	}
	resubscribe()
	backoff := minResubscribe
	pinged := false
	for {
		msg, err := sub.pubsub.ReceiveTimeout(ctx, healthInterval)
		if n.client.isClosing() {
			return
		}
		switch {
		case err != nil && timedOut(err):
			// Nothing for an interval: ask, and count the node out if
			// the question goes unanswered too.
			if pinged {
				n.update(sub, func(s *subscription) { s.silent = true })
			}
			pingCtx, cancel := context.WithTimeout(ctx, n.client.cfg.perNodeTimeout())
			_ = sub.pubsub.Ping(pingCtx)
			cancel()
			pinged = true
		case err != nil:
			sub.node.failed(err)
			denied := isDenied(err)
			n.update(sub, func(s *subscription) { s.confirmed, s.denied = false, denied })
			wait := backoff
			if denied {
				n.client.wakeUnheard(sub.node, "SUBSCRIBE")
				wait = deniedResubscribe
			}
			if !n.sleep(wait) {
				return
			}
			backoff = min(2*backoff, maxResubscribe)
			if denied {
				resubscribe()
			}
		default:
			backoff, pinged = minResubscribe, false
			n.heard(sub, msg)
		}
	}
}

// heard acts on a message from a subscription.
func (n *notifier) heard(sub *subscription, msg any) {
	switch msg := msg.(type) {
	case *redis.Subscription:
		if msg.Channel != n.channel {
			// A watched channel's: the wake-ups' state is the Client's
			// channel's alone.
			n.update(sub, func(s *subscription) { s.silent = false })
			return
		}
		subscribed := msg.Kind == "subscribe"
		n.update(sub, func(s *subscription) { s.confirmed, s.silent, s.denied = subscribed, false, false })
	case *redis.Message:
		n.update(sub, func(s *subscription) { s.silent = false })
		if msg.Channel != n.channel {
			n.tell(msg.Channel)
			return
		}
		n.wake(msg.Payload, sub.node.index)
	default: // a PING's answer
		n.update(sub, func(s *subscription) { s.silent = false })
	}
}

// isDenied reports an error the server gives a user it does not let
// subscribe.
func isDenied(err error) bool {
	var redisErr redis.Error
	return errors.As(err, &redisErr) && strings.HasPrefix(redisErr.Error(), "NOPERM")
}

// update changes a subscription's flags, and tells the waiters waiting for
// a quorum of subscriptions if anything changed.
func (n *notifier) update(sub *subscription, change func(*subscription)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	before := *sub
	change(sub)
	if before.confirmed != sub.confirmed || before.silent != sub.silent || before.denied != sub.denied {
		close(n.changed)
		n.changed = make(chan struct{})
	}
}

// sleep waits d or until the Client closes; it reports false if it closed.
func (n *notifier) sleep(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-n.client.closing:
		return false
	}
}

// ready waits until a quorum of nodes listens for wake-ups, so that a
// release after that, which publishes on a quorum, reaches the waiter: a
// waiter must not count on a wake-up before it can hear its turn. It
// reports whether a quorum listens; it gives up at once if too many nodes
// deny the subscription, and otherwise after timeout, when ctx ends, or
// when the Client closes. A waiter that is not ready polls instead.
func (l *listener) ready(ctx context.Context, timeout time.Duration) bool {
	n := l.n
	var expired <-chan time.Time
	for {
		n.mu.Lock()
		listening, denied := 0, 0
		for _, s := range n.subs {
			if s.listening() {
				listening++
			}
			if s.denied {
				denied++
			}
		}
		changed := n.changed
		nodes := len(n.client.nodes)
		n.mu.Unlock()
		switch {
		case listening >= quorum(nodes):
			return true
		case n.subs == nil || nodes-denied < quorum(nodes):
			return false
		}
		if expired == nil {
			timer := time.NewTimer(timeout)
			defer timer.Stop()
			expired = timer.C
		}
		select {
		case <-changed:
		case <-expired:
			return false
		case <-ctx.Done():
			return false
		case <-n.client.closing:
			return false
		}
	}
}

// wake passes a wake-up from node to the listener of the waiter it names.
func (n *notifier) wake(waiter string, node int) {
	if !strings.HasPrefix(waiter, n.id+waiterSeparator) {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.listeners[waiter]; l != nil {
		l.from = setBit(l.from, node, len(n.client.nodes))
		select {
		case l.C <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// shutdown ends the subscriptions and waits for their goroutines, after
// the Client began closing.
func (n *notifier) shutdown() {
	n.mu.Lock()
	subs := n.subs
	n.mu.Unlock()
	for _, sub := range subs {
		sub.pubsub.Close()
	}
	n.running.Wait()
}
