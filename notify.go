package redlock

import (
	"context"
	"crypto/rand"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// notifier wakes waiters when a holder releases a lock. A waiter's id starts
// with its Client's id; the release script pops the id at the head of the
// lock's queue and publishes it on that Client's own channel, so that each
// wake-up reaches the one Client concerned, however many wait. The notifier
// keeps one subscription connection per node, subscribed to the Client's
// channel from the first wait until Close, and passes each message to the
// waiter it names. Messages can be lost (a node down, a reconnect, a woken
// waiter that has died), so waiters also retry on a timer.
type notifier struct {
	client  *Client
	id      string // the Client's id, which starts its waiters' ids
	channel string // the Client's channel

	mu       sync.Mutex
	watchers map[string]*watch // by waiter id
	subs     []*nodeSubscription
	running  sync.WaitGroup
	// confirmed says which nodes have confirmed the subscription; changed
	// is closed and replaced when that changes.
	confirmed []bool
	changed   chan struct{}
}

// watch is one waiter's registration. C receives a value when a release
// names the waiter; it holds one pending wake-up.
type watch struct {
	C      chan struct{}
	waiter string
	n      *notifier
}

// nodeSubscription is the subscription to one node, run by one goroutine.
type nodeSubscription struct {
	index  int // of the node
	pubsub *redis.PubSub
}

// waiterSeparator ends a Client's id in its waiters' ids; the release script
// finds the channel to publish on by it.
const waiterSeparator = "."

func newNotifier(c *Client) *notifier {
	id := rand.Text()
	return &notifier{
		client:    c,
		id:        id,
		channel:   wakeChannelPrefix + id,
		watchers:  make(map[string]*watch),
		confirmed: make([]bool, len(c.nodes)),
		changed:   make(chan struct{}),
	}
}

// wakeChannelPrefix starts the name of every Client's channel.
const wakeChannelPrefix = "redlock:wake:"

// newWaiter returns a new waiter id of this Client.
func (n *notifier) newWaiter() string {
	return n.id + waiterSeparator + rand.Text()
}

// watch registers waiter. The caller must call stop.
func (n *notifier) watch(waiter string) *watch {
	w := &watch{C: make(chan struct{}, 1), waiter: waiter, n: n}
	n.client.mu.RLock()
	defer n.client.mu.RUnlock()
	if n.client.closed {
		return w // never woken by a message; the waiter's timer still runs
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.subs == nil {
		n.start()
	}
	n.watchers[waiter] = w
	return w
}

// stop unregisters the waiter.
func (w *watch) stop() {
	n := w.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.watchers[w.waiter] == w {
		delete(n.watchers, w.waiter)
	}
}

// start subscribes to the Client's channel on every node. n.mu and
// client.mu (read) are held.
func (n *notifier) start() {
	for _, nd := range n.client.nodes {
		sub := &nodeSubscription{index: nd.index, pubsub: nd.client.Subscribe(context.Background())}
		n.subs = append(n.subs, sub)
		n.running.Go(func() { n.run(sub) })
	}
}

// run subscribes to the Client's channel on one node and forwards its
// messages until the Client closes. go-redis remembers the channel even if
// this first SUBSCRIBE fails, subscribes again after a reconnect, and says
// so.
func (n *notifier) run(sub *nodeSubscription) {
	defer sub.pubsub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), n.client.cfg.perNodeTimeout())
	_ = sub.pubsub.Subscribe(ctx, n.channel)
	cancel()
	messages := sub.pubsub.ChannelWithSubscriptions()
	for {
		select {
		case <-n.client.closing:
			return
		case msg, ok := <-messages:
			if !ok {
				return
			}
			switch msg := msg.(type) {
			case *redis.Message:
				n.wake(msg.Payload)
			case *redis.Subscription:
				n.confirm(sub.index, msg.Kind == "subscribe")
			}
		}
	}
}

// confirm records that a node confirmed the subscription, or its end.
func (n *notifier) confirm(node int, subscribed bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.confirmed[node] = subscribed
	close(n.changed)
	n.changed = make(chan struct{})
}

// ready waits until a quorum of nodes has confirmed the subscription, so
// that a release after that, which publishes on a quorum, reaches the
// waiter: a waiter must not join the queue before it can hear its turn. It
// gives up after timeout, when ctx ends, or when the Client closes; the
// waiter's timer then covers a wake-up it misses.
func (w *watch) ready(ctx context.Context, timeout time.Duration) {
	n := w.n
	var expired <-chan time.Time
	for {
		n.mu.Lock()
		count := 0
		for _, ok := range n.confirmed {
			if ok {
				count++
			}
		}
		changed := n.changed
		n.mu.Unlock()
		if count >= quorum(len(n.confirmed)) {
			return
		}
		if expired == nil {
			timer := time.NewTimer(timeout)
			defer timer.Stop()
			expired = timer.C
		}
		select {
		case <-changed:
		case <-expired:
			return
		case <-ctx.Done():
			return
		case <-n.client.closing:
			return
		}
	}
}

// wake passes a wake-up to the waiter it names.
func (n *notifier) wake(waiter string) {
	if !strings.HasPrefix(waiter, n.id+waiterSeparator) {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if w := n.watchers[waiter]; w != nil {
		select {
		case w.C <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// wait waits for the subscription goroutines after the Client began closing.
func (n *notifier) wait() { n.running.Wait() }
