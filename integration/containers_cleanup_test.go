package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ory/dockertest/v3"
	"github.com/ory/dockertest/v3/docker"
)

// TestRemoveLeftovers labels created, never started, containers as other
// runs would and checks which ones removeLeftovers takes.
func TestRemoveLeftovers(t *testing.T) {
	begin(t)
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}
	dead := strconv.Itoa(exited.Process.Pid)
	live := strconv.Itoa(os.Getpid())
	host, _ := os.Hostname()
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	tests := []struct {
		name               string
		host, pid, expires string // labels; empty ones are left out
		removed            bool
	}{
		{"owner gone", host, dead, future, true},
		{"owner alive", host, live, future, false},
		{"deadline passed", host, live, past, true},
		{"owner on another host", "elsewhere", dead, future, false},
		{"no labels but the suite's, created now", "", "", "", false},
	}
	ids := make([]string, len(tests))
	for i, tt := range tests {
		labels := map[string]string{suiteLabelKey: suiteLabelValue}
		for key, value := range map[string]string{hostLabel: tt.host, pidLabel: tt.pid, deadlineLabel: tt.expires} {
			if value != "" {
				labels[key] = value
			}
		}
		container, err := suite.pool.Client.CreateContainer(docker.CreateContainerOptions{
			Config: &docker.Config{Image: suite.repo + ":" + suite.tag, Cmd: []string{"redis-server"}, Labels: labels},
		})
		if err != nil {
			t.Fatalf("create container %q: %v", tt.name, err)
		}
		ids[i] = container.ID
		t.Cleanup(func() {
			suite.pool.Client.RemoveContainer(docker.RemoveContainerOptions{ID: container.ID, Force: true})
		})
	}
	removed, err := removeLeftovers(suite.pool.Client, time.Now())
	if err != nil {
		t.Fatalf("removeLeftovers: %v", err)
	}
	for i, tt := range tests {
		_, err := suite.pool.Client.InspectContainer(ids[i])
		var noSuch *docker.NoSuchContainer
		gone := errors.As(err, &noSuch)
		if !gone && err != nil {
			t.Fatalf("inspect container %q: %v", tt.name, err)
		}
		if gone != tt.removed || slices.Contains(removed, ids[i]) != tt.removed {
			t.Errorf("%s: removed = %v (in returned IDs: %v); want %v", tt.name, gone, slices.Contains(removed, ids[i]), tt.removed)
		}
	}
	for i, s := range suite.servers {
		if err := ping(s.addr()); err != nil {
			t.Errorf("server %d after removeLeftovers: %v; want it untouched", i, err)
		}
	}
}

// TestExpireKillsAtTheDeadline runs a Redis container with a deadline 3s
// away: it must keep serving until then, after expire has hung up, and be
// killed by the daemon soon after.
func TestExpireKillsAtTheDeadline(t *testing.T) {
	begin(t)
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{port: port}
	resource, err := suite.pool.RunWithOptions(&dockertest.RunOptions{
		Repository: suite.repo,
		Tag:        suite.tag,
		Cmd:        []string{"redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"},
		Labels:     ownerLabels(time.Now().Add(time.Minute)),
	}, func(hc *docker.HostConfig) { hc.NetworkMode = "host" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { suite.pool.Purge(resource) })
	if err := suite.pool.Retry(func() error { return ping(s.addr()) }); err != nil {
		t.Fatal(err)
	}
	const grace = 3 * time.Second
	start := time.Now()
	if err := expire(suite.pool.Client, resource.Container.ID, start.Add(grace)); err != nil {
		t.Fatalf("expire: %v", err)
	}
	time.Sleep(grace / 2)
	if err := ping(s.addr()); err != nil {
		t.Fatalf("ping %v after expire with a %v grace: %v; want an answer", time.Since(start), grace, err)
	}
	for {
		state, err := suite.pool.Client.InspectContainer(resource.Container.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !state.State.Running {
			if lived := state.State.FinishedAt.Sub(start); lived < grace-time.Second/10 {
				t.Errorf("killed %v after expire with a %v grace; want no sooner", lived, grace)
			}
			if state.State.ExitCode != 137 {
				t.Errorf("exit code = %d; want 137 (SIGKILL)", state.State.ExitCode)
			}
			t.Logf("killed %v after expire with a %v grace", state.State.FinishedAt.Sub(start).Round(10*time.Millisecond), grace)
			return
		}
		if time.Since(start) > grace+5*time.Second {
			t.Fatalf("container still running %v after expire with a %v grace", time.Since(start), grace)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
