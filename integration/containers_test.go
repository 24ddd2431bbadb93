package integration

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http/httptrace"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/ory/dockertest/v3/docker"
)

// The labels of every container the suite starts. suiteLabelKey=
// suiteLabelValue marks it as the suite's (older suites set it too); the
// others say which run owns it and until when.
const (
	suiteLabelKey   = "redlock-test"
	suiteLabelValue = "integration"
	hostLabel       = "redlock-test.host"     // os.Hostname of the run
	pidLabel        = "redlock-test.pid"      // pid of the test binary
	deadlineLabel   = "redlock-test.deadline" // RFC 3339; the run is over by then
)

// setUpSlack is how long setUp may take before m.Run starts the test
// timeout's clock: five containers of at most pool.MaxWait (30s) each to
// answer, with room to spare.
const setUpSlack = 5 * time.Minute

// untimedRun bounds a run whose -timeout is 0, and a container from an older
// suite that has no deadline label, which ran with the suite's -timeout 15m.
const untimedRun = time.Hour

// runDeadline is when the run that starts now is over for sure: the test
// binary panics at its -timeout, counted from m.Run, which starts after
// setUp. With the suite's -timeout 15m it is 20 minutes from now.
func runDeadline(now time.Time) time.Time {
	timeout := time.Duration(0)
	if f := flag.Lookup("test.timeout"); f != nil {
		timeout, _ = f.Value.(flag.Getter).Get().(time.Duration)
	}
	if timeout <= 0 {
		return now.Add(untimedRun)
	}
	return now.Add(timeout + setUpSlack)
}

// ownerLabels are the labels of a container owned by this process until
// deadline.
func ownerLabels(deadline time.Time) map[string]string {
	host, _ := os.Hostname()
	return map[string]string{
		suiteLabelKey: suiteLabelValue,
		hostLabel:     host,
		pidLabel:      strconv.Itoa(os.Getpid()),
		deadlineLabel: deadline.UTC().Format(time.RFC3339),
	}
}

// removeLeftovers removes the suite's containers that no live run can be
// using, running or not, and returns their IDs. A container is left over
// when its deadline has passed (its expiry has stopped it, or a suite older
// than the labels started it more than untimedRun ago), or when it comes
// from this host and its owner's pid is gone, as after a SIGKILL or a
// closed output pipe. Pids are not compared across hosts, whose pid
// namespaces differ, and a pid reused since is taken for the owner; both
// keep the container until its deadline, so that another run still going
// never loses its servers.
func removeLeftovers(client *docker.Client, now time.Time) ([]string, error) {
	containers, err := client.ListContainers(docker.ListContainersOptions{
		All:     true,
		Filters: map[string][]string{"label": {suiteLabelKey + "=" + suiteLabelValue}},
	})
	if err != nil {
		return nil, fmt.Errorf("list the suite's containers: %w", err)
	}
	host, _ := os.Hostname()
	var removed []string
	var errs []error
	for _, container := range containers {
		if !leftOver(container, host, now) {
			continue
		}
		err := client.RemoveContainer(docker.RemoveContainerOptions{ID: container.ID, Force: true, RemoveVolumes: true})
		var gone *docker.NoSuchContainer
		if errors.As(err, &gone) {
			continue // another run removed it first
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove leftover container %.12s: %w", container.ID, err))
			continue
		}
		removed = append(removed, container.ID)
	}
	return removed, errors.Join(errs...)
}

// leftOver reports whether no live run can be using container; see
// removeLeftovers.
func leftOver(container docker.APIContainers, host string, now time.Time) bool {
	deadline, err := time.Parse(time.RFC3339, container.Labels[deadlineLabel])
	if err != nil {
		deadline = time.Unix(container.Created, 0).Add(untimedRun)
	}
	if now.After(deadline) {
		return true
	}
	pid, err := strconv.Atoi(container.Labels[pidLabel])
	if err != nil || pid <= 0 || container.Labels[hostLabel] != host {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// expireHold is how long expire keeps a stop request's connection open
// after writing it.
const expireHold = 500 * time.Millisecond

// expire has the Docker daemon kill the running container id at deadline,
// even if this process dies first: it asks the daemon to stop the container
// with a grace lasting until deadline. dockertest gives its containers
// SIGWINCH as their stop signal, which does not end redis-server, so the
// SIGKILL at the grace's end does. The daemon keeps waiting once the
// request's connection is gone, once it has begun the stop; a request
// dropped before the daemon read it is lost with the connection (a loaded
// CI machine showed it), so expire hangs up expireHold after the request is
// written, unless the daemon answered first. (dockertest's Resource.Expire sends the same request but holds it
// in a goroutine nobody waits for until the container stops, which the
// tests' leak checks catch after a restart.)
func expire(client *docker.Client, id string, deadline time.Time) error {
	grace := uint(max((time.Until(deadline)+time.Second-1)/time.Second, 1)) // rounded up
	wrote := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				select {
				case wrote <- struct{}{}:
				default:
				}
			}
		},
	})
	answer := make(chan error, 1)
	go func() { answer <- client.StopContainerWithContext(id, grace, ctx) }()
	var err error
	select {
	case <-wrote:
		// The daemon has the request and need not answer; give it time to
		// begin the stop before the connection goes.
		hold := time.NewTimer(expireHold)
		select {
		case err = <-answer:
			hold.Stop()
		case <-hold.C:
			cancel()
			err = <-answer
		}
	case err = <-answer: // not written, or answered at once
	}
	switch {
	case errors.Is(err, context.Canceled):
		return nil
	case err == nil:
		err = errors.New("container stopped at once")
	}
	return fmt.Errorf("expire container %.12s: %w", id, err)
}
