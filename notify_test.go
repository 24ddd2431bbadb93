package redlock

import (
	"slices"
	"testing"
)

func TestClientSubscribesOnceToItsOwnChannel(t *testing.T) {
	mrs, clients := servers(t, 3)
	holders := newClient(t, clients)
	c := newClient(t, clients)
	// Two waits on two locks: each release wakes the waiter through its
	// Client's channel, which is subscribed once for both.
	for _, name := range []string{"one", "two"} {
		holder := holders.NewMutex(name)
		holder.Lock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			waiter := c.NewMutex(name)
			waiter.Lock()
			waiter.Unlock()
		}()
		waitFor(t, "the waiter to queue", func() bool { return len(queueOf(mrs[0], name)) == 1 })
		holder.Unlock()
		<-done
	}
	for i, mr := range mrs {
		if got, want := mr.PubSubChannels(""), []string{c.notifier.channel}; !slices.Equal(got, want) {
			t.Errorf("node %d: subscribed channels = %v; want only the waiting Client's, %v", i, got, want)
		}
	}
}

// A subscription whose connection dropped stops counting as
// listening until the server confirms it again.
func TestDroppedSubscriptionStopsCounting(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients)
	n := c.notifier
	l := n.listen(n.newWaiter())
	defer l.unregister()
	listening := func(i int) bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.subs[i].listening()
	}
	waitFor(t, "every node to confirm", func() bool { return listening(0) && listening(1) && listening(2) })
	mrs[0].Close()
	waitFor(t, "node 0 to stop counting once its connection dropped", func() bool { return !listening(0) })
	if err := mrs[0].Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node 0 to confirm again", func() bool { return listening(0) })
}
