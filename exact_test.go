package redlock

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// foreignRelease is the compare-and-delete every Redlock client releases with.
var foreignRelease = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)

// foreign acquires and releases name the way redsync, node-redlock and the
// Python redlock do: SET NX PX with a random value on each node, and a
// compare-and-delete.
type foreign struct {
	clients []redis.UniversalClient
	name    string
	value   string
}

func (f *foreign) tryLock(t *testing.T, ttl time.Duration) bool {
	t.Helper()
	granted := 0
	for _, rc := range f.clients {
		ok, err := rc.SetNX(t.Context(), f.name, f.value, ttl).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			granted++
		}
	}
	if granted < quorum(len(f.clients)) {
		f.unlock(t)
		return false
	}
	return true
}

func (f *foreign) unlock(t *testing.T) {
	t.Helper()
	for _, rc := range f.clients {
		if err := foreignRelease.Run(t.Context(), rc, []string{f.name}, f.value).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestExactKeyIsTheName(t *testing.T) {
	mrs, clients := servers(t, 3)
	c := newClient(t, clients, WithExactKey(), WithFencing())
	for _, name := range []string{"job", "{orders}:lock", "a b:c"} {
		m := c.NewMutex(name)
		if err := m.Do(t.Context(), func(context.Context) error {
			if n := keysOn(mrs, name); n < 2 {
				t.Errorf("key %q on %d nodes while held; want a quorum", name, n)
			}
			return nil
		}); err != nil {
			t.Errorf("Do(%q) = %v", name, err)
		}
		settle(t, c.nodes)
		if n := keysOn(mrs, name); n != 0 {
			t.Errorf("key %q on %d nodes after Do; want 0", name, n)
		}
		if n := keysOn(mrs, name+":fence"); n < 2 {
			t.Errorf("fencing counter %q on %d nodes; want a quorum", name+":fence", n)
		}
	}
	if _, err := c.NewMutex("").TryLockContext(t.Context()); err == nil {
		t.Error("TryLockContext of an empty name with WithExactKey succeeded; want an error")
	}
}

func TestExactKeyExcludesOtherRedlockClients(t *testing.T) {
	_, clients := servers(t, 3)
	m := newClient(t, clients, WithExactKey()).NewMutex("shared")
	other := &foreign{clients: clients, name: "shared", value: "foreign-value"}
	if !other.tryLock(t, 10*time.Second) {
		t.Fatal("the foreign client did not get a free lock")
	}
	if _, err := m.TryLockContext(t.Context()); !errors.Is(err, ErrTaken) {
		t.Errorf("TryLockContext while a foreign client holds the key = %v; want ErrTaken", err)
	}
	other.unlock(t)
	if !m.TryLock() {
		t.Fatal("TryLock after the foreign client released = false; want true")
	}
	if other.tryLock(t, 10*time.Second) {
		t.Error("the foreign client got the lock while the Mutex held it")
	}
	m.Unlock()
	settle(t, m.client.nodes)
	if !other.tryLock(t, 10*time.Second) {
		t.Error("the foreign client did not get the lock after Unlock")
	}
	other.unlock(t)
}

// TestWaiterPollsPromptlyBehindAForeignHolder checks that a queued waiter
// does not wait ten retry delays between attempts when the holder is a
// client that will not wake it.
func TestWaiterPollsPromptlyBehindAForeignHolder(t *testing.T) {
	_, clients := servers(t, 3)
	const delay = 100 * time.Millisecond
	m := newClient(t, clients, WithExactKey(), WithRetryDelay(delay), WithRetryJitter(0)).NewMutex("shared")
	other := &foreign{clients: clients, name: "shared", value: "foreign-value"}
	if !other.tryLock(t, 10*time.Second) {
		t.Fatal("the foreign client did not get a free lock")
	}
	acquired := make(chan time.Time, 1)
	go func() {
		if _, err := m.LockContext(t.Context()); err != nil {
			t.Error(err)
		}
		acquired <- time.Now()
	}()
	// By now the waiter has tried, queued, and waits to poll: a second
	// before its next attempt if it waits ten retry delays.
	time.Sleep(2 * delay)
	other.unlock(t)
	releasedAt := time.Now()
	got := (<-acquired).Sub(releasedAt)
	t.Logf("acquired %v after the foreign holder released", got)
	if got > 4*delay {
		t.Errorf("acquired %v after the foreign holder released; want within a few retry delays of %v, not %v", got, delay, queuedPollFactor*delay)
	}
	m.Unlock()
}

// TestExactKeyOnAClusterNeedsAHashTag checks that on a Redis Cluster a name
// used as the key must carry a hash tag, or the lock's suffixed keys would
// land in other slots and its scripts fail.
func TestExactKeyOnAClusterNeedsAHashTag(t *testing.T) {
	mrs, _ := servers(t, 1)
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{mrs[0].Addr()}})
	defer cluster.Close()
	c := newClient(t, []redis.UniversalClient{cluster}, WithExactKey())
	for name, ok := range map[string]bool{"{orders}:lock": true, "x{a}": true, "orders": false, "{}orders": false, "a{b": false, "a}b{": false} {
		err := c.NewMutex(name).err
		if got := err == nil; got != ok {
			t.Errorf("NewMutex(%q) on a cluster with WithExactKey: error %v; want ok = %v", name, err, ok)
		}
	}
	plain := redis.NewClient(&redis.Options{Addr: mrs[0].Addr()})
	defer plain.Close()
	if err := newClient(t, []redis.UniversalClient{plain}, WithExactKey()).NewMutex("orders").err; err != nil {
		t.Errorf("NewMutex(%q) on a plain server with WithExactKey: %v; want no error", "orders", err)
	}
}
