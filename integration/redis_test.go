package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ory/dockertest/v3"
	"github.com/ory/dockertest/v3/docker"
	"github.com/redis/go-redis/v9"
)

// nodeCount is how many Redis containers the suite starts; 3-node tests use
// the first three.
const nodeCount = 5

// defaultImage is built from Debian's redis-server by scripts/test.sh.
const defaultImage = "redlock-redis:local"

// server is one Redis container, on its own port of 127.0.0.1 with host
// networking.
type server struct {
	resource *dockertest.Resource
	port     int
}

func (s *server) url() string  { return fmt.Sprintf("redis://127.0.0.1:%d/0", s.port) }
func (s *server) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// cluster is the suite's set of containers.
type cluster struct {
	pool       *dockertest.Pool
	repo, tag  string
	servers    []*server
	persistDir string    // host folder for the AOF files of servers that keep them
	deadline   time.Time // when this run is over for sure; its containers expire then
}

var suite *cluster

// setUp starts the containers, or explains why it cannot.
func setUp() (*cluster, error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	if err := pool.Client.Ping(); err != nil {
		return nil, fmt.Errorf("docker daemon does not answer: %w", err)
	}
	pool.MaxWait = 30 * time.Second
	deadline := runDeadline(time.Now())
	removed, err := removeLeftovers(pool.Client, time.Now())
	if len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "integration suite: removed %d containers left by runs that died\n", len(removed))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration suite: %v\n", err) // theirs to expire; ours use other ports
	}
	image := os.Getenv("REDLOCK_REDIS_IMAGE")
	if image == "" {
		image = defaultImage
	}
	repo, tag, found := strings.Cut(image, ":")
	if !found {
		tag = "latest"
	}
	dir, err := os.MkdirTemp("", "redlock-aof-")
	if err != nil {
		return nil, err
	}
	c := &cluster{pool: pool, repo: repo, tag: tag, persistDir: dir, deadline: deadline}
	for range nodeCount {
		port, err := freePort()
		if err != nil {
			c.tearDown()
			return nil, err
		}
		s := &server{port: port}
		c.servers = append(c.servers, s)
		if err := c.start(s, false); err != nil {
			c.tearDown()
			return nil, err
		}
	}
	return c, nil
}

// start runs a Redis container for s on its port; with aof, the server
// writes every change to an append-only file (fsync always) kept in a host
// folder across restarts.
func (c *cluster) start(s *server, aof bool) error {
	cmd := []string{"redis-server", "--port", fmt.Sprint(s.port), "--bind", "127.0.0.1", "--save", "", "--protected-mode", "no"}
	var mounts []string
	if aof {
		dir := filepath.Join(c.persistDir, fmt.Sprint(s.port))
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		mounts = []string{dir + ":/data"}
		cmd = append(cmd, "--appendonly", "yes", "--appendfsync", "always", "--dir", "/data")
	} else {
		cmd = append(cmd, "--appendonly", "no")
	}
	resource, err := c.pool.RunWithOptions(&dockertest.RunOptions{
		Repository: c.repo,
		Tag:        c.tag,
		Cmd:        cmd,
		Mounts:     mounts,
		Labels:     ownerLabels(c.deadline),
	}, func(hc *docker.HostConfig) {
		hc.NetworkMode = "host"                             // the bridge network is off; see scripts/test.sh
		hc.RestartPolicy = docker.RestartPolicy{Name: "no"} // kill leaves it for restart
	})
	if err != nil {
		return fmt.Errorf("run %s:%s: %w", c.repo, c.tag, err)
	}
	s.resource = resource
	if err := expire(c.pool.Client, resource.Container.ID, c.deadline); err != nil {
		return err
	}
	if err := c.pool.Retry(func() error { return ping(s.addr()) }); err != nil {
		return fmt.Errorf("redis in container %s did not answer on %s: %w", resource.Container.ID[:12], s.addr(), err)
	}
	return nil
}

// kill stops server i at once, as a crash would (SIGKILL). The container
// stays, for restart.
func (c *cluster) kill(i int) error {
	if err := c.pool.Client.KillContainer(docker.KillContainerOptions{ID: c.servers[i].resource.Container.ID, Signal: docker.SIGKILL}); err != nil {
		return fmt.Errorf("kill server %d: %w", i, err)
	}
	return nil
}

// restart starts killed server i again in the same container: with the same
// options, and with its data only if it keeps an AOF.
func (c *cluster) restart(i int) error {
	s := c.servers[i]
	if err := c.pool.Client.StartContainer(s.resource.Container.ID, nil); err != nil {
		return fmt.Errorf("restart server %d: %w", i, err)
	}
	if err := expire(c.pool.Client, s.resource.Container.ID, c.deadline); err != nil {
		return err
	}
	return c.pool.Retry(func() error { return ping(s.addr()) })
}

// replace removes server i's container and starts a new one on its port.
func (c *cluster) replace(i int, aof bool) error {
	c.pool.Purge(c.servers[i].resource)
	return c.start(c.servers[i], aof)
}

func ping(addr string) error {
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return rc.Ping(ctx).Err()
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (c *cluster) tearDown() {
	for _, s := range c.servers {
		if s.resource != nil {
			c.pool.Purge(s.resource)
		}
	}
	os.RemoveAll(c.persistDir)
}

// urls returns the URLs of the first n servers.
func (c *cluster) urls(n int) []string {
	var urls []string
	for _, s := range c.servers[:n] {
		urls = append(urls, s.url())
	}
	return urls
}

// pause freezes the given servers until the test ends or resume is called.
func (c *cluster) pause(t *testing.T, indexes ...int) {
	t.Helper()
	for _, i := range indexes {
		id := c.servers[i].resource.Container.ID
		if err := c.pool.Client.PauseContainer(id); err != nil {
			t.Fatalf("pause server %d: %v", i, err)
		}
		t.Cleanup(func() { c.pool.Client.UnpauseContainer(id) })
	}
}

func (c *cluster) resume(t *testing.T, indexes ...int) {
	t.Helper()
	for _, i := range indexes {
		if err := c.pool.Client.UnpauseContainer(c.servers[i].resource.Container.ID); err != nil {
			t.Fatalf("unpause server %d: %v", i, err)
		}
	}
}

// clients returns plain go-redis clients to the first n servers, for
// inspecting keys.
func (c *cluster) clients(t *testing.T, n int) []*redis.Client {
	t.Helper()
	var clients []*redis.Client
	for _, s := range c.servers[:n] {
		rc := redis.NewClient(&redis.Options{Addr: s.addr()})
		t.Cleanup(func() { rc.Close() })
		clients = append(clients, rc)
	}
	return clients
}

// flush empties every server, so that tests do not see each other's keys.
func (c *cluster) flush(t *testing.T) {
	t.Helper()
	for i, rc := range c.clients(t, nodeCount) {
		if err := rc.FlushAll(t.Context()).Err(); err != nil {
			t.Fatalf("flush server %d: %v", i, err)
		}
	}
}
