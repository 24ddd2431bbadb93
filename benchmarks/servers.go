package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// server is a redis-server process this harness started, on 127.0.0.1.
type server struct {
	cmd  *exec.Cmd
	addr string
}

// startServers starts n redis-server processes without persistence.
func startServers(n int) ([]*server, error) {
	var servers []*server
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			stopServers(servers)
			return nil, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			stopServers(servers)
			return nil, fmt.Errorf("start redis-server (is it installed?): %w", err)
		}
		s := &server{cmd: cmd, addr: fmt.Sprintf("127.0.0.1:%d", port)}
		servers = append(servers, s)
		if err := waitReady(s.addr); err != nil {
			stopServers(servers)
			return nil, err
		}
	}
	return servers, nil
}

func waitReady(addr string) error {
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rc.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := rc.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s did not answer: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopServers stops the processes by PID, and waits for them.
func stopServers(servers []*server) {
	for _, s := range servers {
		s.cmd.Process.Signal(syscall.SIGCONT) // in case a scenario froze it
		s.cmd.Process.Signal(syscall.SIGTERM)
		s.cmd.Wait()
	}
}

func (s *server) freeze()   { s.cmd.Process.Signal(syscall.SIGSTOP) }
func (s *server) unfreeze() { s.cmd.Process.Signal(syscall.SIGCONT) }

// commandCounter reads how many commands the servers have processed.
type commandCounter struct{ clients []*redis.Client }

func newCommandCounter(servers []*server) *commandCounter {
	c := &commandCounter{}
	for _, s := range servers {
		c.clients = append(c.clients, redis.NewClient(&redis.Options{Addr: s.addr}))
	}
	return c
}

// total is the sum of total_commands_processed. The INFO call that reads it
// is counted by the next reading, so a difference of two readings includes
// one INFO per server: use since.
func (c *commandCounter) total() int64 {
	var sum int64
	for _, rc := range c.clients {
		info := rc.Info(context.Background(), "stats").Val()
		for line := range strings.SplitSeq(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				sum += n
			}
		}
	}
	return sum
}

// calls is the number of calls of the named commands the servers have
// processed, not counting calls made by scripts.
func (c *commandCounter) calls(names ...string) int64 {
	var sum int64
	for _, rc := range c.clients {
		info := rc.Info(context.Background(), "commandstats").Val()
		for line := range strings.SplitSeq(info, "\r\n") {
			for _, name := range names {
				stats, ok := strings.CutPrefix(line, "cmdstat_"+name+":calls=")
				if !ok {
					continue
				}
				count, _, _ := strings.Cut(stats, ",")
				n, _ := strconv.ParseInt(count, 10, 64)
				sum += n
			}
		}
	}
	return sum
}

// cpu is the sum of the servers' CPU time, user and system, as INFO cpu
// reports it (to the microsecond).
func (c *commandCounter) cpu() time.Duration {
	var sum float64
	for _, rc := range c.clients {
		info := rc.Info(context.Background(), "cpu").Val()
		for line := range strings.SplitSeq(info, "\r\n") {
			for _, field := range []string{"used_cpu_sys:", "used_cpu_user:"} {
				if v, ok := strings.CutPrefix(line, field); ok {
					seconds, _ := strconv.ParseFloat(v, 64)
					sum += seconds
				}
			}
		}
	}
	return time.Duration(sum * float64(time.Second))
}

// since returns the commands processed since the reading before.
func (c *commandCounter) since(before int64) int64 {
	return c.total() - before - int64(len(c.clients))
}

func (c *commandCounter) close() {
	for _, rc := range c.clients {
		rc.Close()
	}
}
