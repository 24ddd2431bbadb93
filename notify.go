package redlock

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// notifier wakes waiters when a holder releases a lock. The release script
// publishes, on the lock's channel on every node, the id of the waiter at the
// head of that node's queue; the notifier keeps one subscription connection
// per node, shared by every waiter of the Client, subscribed to the channels
// that have waiters or had some within subscriptionLinger, and passes each message to the waiters of its
// channel, which act only on their own id. Messages can be lost (a node
// down, a reconnect, a woken waiter that has died), so waiters also retry on
// a timer.
type notifier struct {
	client *Client

	mu       sync.Mutex
	watchers map[string]map[*watch]struct{} // by channel
	subs     []*nodeSubscription            // nil until the first watch
	running  sync.WaitGroup
	// confirmed says, by channel, which nodes have confirmed the
	// subscription; changed is closed and replaced when it changes.
	confirmed map[string][]bool
	changed   chan struct{}
}

// watch is one waiter's registration. C receives the ids of the waiters that
// releases woke; it holds one pending message, and drops more.
type watch struct {
	C       chan string
	channel string
	n       *notifier
}

// nodeSubscription is the subscription to one node, run by one goroutine.
type nodeSubscription struct {
	index  int // of the node
	pubsub *redis.PubSub
	kick   chan struct{} // the wanted channels changed
}

func newNotifier(c *Client) *notifier {
	return &notifier{
		client:    c,
		watchers:  make(map[string]map[*watch]struct{}),
		confirmed: make(map[string][]bool),
		changed:   make(chan struct{}),
	}
}

// watch registers a waiter on channel. The caller must call stop.
func (n *notifier) watch(channel string) *watch {
	w := &watch{C: make(chan string, 1), channel: channel, n: n}
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
	set := n.watchers[channel]
	if set == nil {
		set = make(map[*watch]struct{})
		n.watchers[channel] = set
		n.kickAll()
	}
	set[w] = struct{}{}
	return w
}

// stop unregisters the waiter.
func (w *watch) stop() {
	n := w.n
	n.mu.Lock()
	defer n.mu.Unlock()
	set := n.watchers[w.channel]
	if _, ok := set[w]; !ok {
		return
	}
	delete(set, w)
	if len(set) == 0 {
		delete(n.watchers, w.channel)
		n.kickAll()
	}
}

// start makes one subscription per node. n.mu and client.mu (read) are held.
func (n *notifier) start() {
	for _, nd := range n.client.nodes {
		sub := &nodeSubscription{index: nd.index, pubsub: nd.client.Subscribe(context.Background()), kick: make(chan struct{}, 1)}
		n.subs = append(n.subs, sub)
		n.running.Go(func() { n.run(sub) })
	}
}

func (n *notifier) kickAll() {
	for _, sub := range n.subs {
		select {
		case sub.kick <- struct{}{}:
		default: // already pending
		}
	}
}

// run keeps one node's subscription in line with the wanted channels and
// forwards its messages, until the Client closes.
func (n *notifier) run(sub *nodeSubscription) {
	defer sub.pubsub.Close()
	messages := sub.pubsub.ChannelWithSubscriptions()
	// subscribed maps each channel subscribed to the time it lost its last
	// waiter, or to the zero time while it has waiters.
	subscribed := make(map[string]time.Time)
	timeout := n.client.cfg.perNodeTimeout()
	sweep := time.NewTicker(subscriptionLinger / 2)
	defer sweep.Stop()
	for {
		select {
		case <-n.client.closing:
			return
		case <-sub.kick:
			n.reconcile(sub.pubsub, subscribed, timeout)
		case <-sweep.C:
			n.reconcile(sub.pubsub, subscribed, timeout)
		case msg, ok := <-messages:
			if !ok {
				return
			}
			switch msg := msg.(type) {
			case *redis.Message:
				n.wake(msg.Channel, msg.Payload)
			case *redis.Subscription:
				n.confirm(sub.index, msg.Channel, msg.Kind == "subscribe")
			}
		}
	}
}

// subscriptionLinger is how long a channel stays subscribed after its last
// waiter left. A lock that is contended again soon, as busy locks are, then
// costs no SUBSCRIBE and UNSUBSCRIBE per wait.
const subscriptionLinger = 10 * time.Second

// reconcile subscribes to channels that gained waiters and unsubscribes from
// those that have had none for subscriptionLinger. go-redis remembers the
// channels and subscribes again after a reconnect, so a failed call here is
// not retried.
func (n *notifier) reconcile(pubsub *redis.PubSub, subscribed map[string]time.Time, timeout time.Duration) {
	now := time.Now()
	n.mu.Lock()
	var add, remove []string
	for channel := range n.watchers {
		if _, ok := subscribed[channel]; !ok {
			add = append(add, channel)
		}
		subscribed[channel] = time.Time{}
	}
	for channel, idleSince := range subscribed {
		if _, wanted := n.watchers[channel]; wanted {
			continue
		}
		switch {
		case idleSince.IsZero():
			subscribed[channel] = now
		case now.Sub(idleSince) >= subscriptionLinger:
			remove = append(remove, channel)
			delete(subscribed, channel)
		}
	}
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if len(add) > 0 {
		_ = pubsub.Subscribe(ctx, add...)
	}
	if len(remove) > 0 {
		_ = pubsub.Unsubscribe(ctx, remove...)
	}
}

// confirm records that a node confirmed a subscription, or its end.
func (n *notifier) confirm(node int, channel string, subscribed bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	nodes := n.confirmed[channel]
	if nodes == nil {
		nodes = make([]bool, len(n.client.nodes))
		n.confirmed[channel] = nodes
	}
	nodes[node] = subscribed
	if !slices.Contains(nodes, true) {
		delete(n.confirmed, channel)
	}
	close(n.changed)
	n.changed = make(chan struct{})
}

// ready waits until a quorum of nodes has confirmed the subscription to the
// waiter's channel, so that a release after that, which publishes on a
// quorum, reaches the waiter: a waiter must not join the queue before it can
// hear its turn. It gives up after timeout, when ctx ends, or when the
// Client closes; the waiter's timer then covers a wake-up it misses.
func (w *watch) ready(ctx context.Context, timeout time.Duration) {
	n := w.n
	var expired <-chan time.Time
	for {
		n.mu.Lock()
		count := 0
		for _, ok := range n.confirmed[w.channel] {
			if ok {
				count++
			}
		}
		changed := n.changed
		n.mu.Unlock()
		if count >= quorum(len(n.client.nodes)) {
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

func (n *notifier) wake(channel, woken string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for w := range n.watchers[channel] {
		select {
		case w.C <- woken:
		default: // a wake-up is already pending
		}
	}
}

// wait waits for the subscription goroutines after the Client began closing.
func (n *notifier) wait() { n.running.Wait() }
