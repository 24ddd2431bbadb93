package integration

import (
	"context"
	"fmt"
	"net"
	"os"
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
	pool    *dockertest.Pool
	servers []*server
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
	image := os.Getenv("REDLOCK_REDIS_IMAGE")
	if image == "" {
		image = defaultImage
	}
	repo, tag, found := strings.Cut(image, ":")
	if !found {
		tag = "latest"
	}
	c := &cluster{pool: pool}
	for range nodeCount {
		port, err := freePort()
		if err != nil {
			c.tearDown()
			return nil, err
		}
		resource, err := pool.RunWithOptions(&dockertest.RunOptions{
			Repository: repo,
			Tag:        tag,
			Cmd: []string{"redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
				"--save", "", "--appendonly", "no", "--protected-mode", "no"},
			Labels: map[string]string{"redlock-test": "integration"},
		}, func(hc *docker.HostConfig) {
			hc.NetworkMode = "host" // the bridge network is off; see scripts/test.sh
			hc.AutoRemove = true
			hc.RestartPolicy = docker.RestartPolicy{Name: "no"}
		})
		if err != nil {
			c.tearDown()
			return nil, fmt.Errorf("run %s: %w", image, err)
		}
		s := &server{resource: resource, port: port}
		c.servers = append(c.servers, s)
		if err := pool.Retry(func() error { return ping(s.addr()) }); err != nil {
			c.tearDown()
			return nil, fmt.Errorf("redis in container %s did not answer on %s: %w", resource.Container.ID[:12], s.addr(), err)
		}
	}
	return c, nil
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
		c.pool.Purge(s.resource)
	}
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
