package integration

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"testing"
)

// workerEnvs name the environment variables that carry a worker process's
// parameters: a process started with one of them set is a worker.
var workerEnvs = []string{"REDLOCK_CHAOS_WORKER", "REDLOCK_SEMAPHORE_WORKER", "REDLOCK_ELECTION_WORKER"}

// startWorker begins a worker process's test: it skips the test unless env
// holds the worker's parameters (with why), reads them into p, and creates
// the file the worker writes to, closed at the test's end.
func startWorker(t *testing.T, env, why string, p interface{ out() string }) *os.File {
	t.Helper()
	raw := os.Getenv(env)
	if raw == "" {
		t.Skip(why)
	}
	if err := json.Unmarshal([]byte(raw), p); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(p.out())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	return out
}

// TestMain starts the Redis containers once for the suite, after removing
// those that earlier runs left when they died. Without Docker the
// suite skips with a loud message, unless REDLOCK_REQUIRE_DOCKER=1 (set by
// scripts/test.sh under CI), in which case it fails.
func TestMain(m *testing.M) {
	for _, env := range workerEnvs {
		if os.Getenv(env) != "" {
			os.Exit(m.Run()) // a worker process: the parent owns the containers
		}
	}
	flag.Parse() // setUp reads -test.timeout for its containers' expiry
	var err error
	suite, err = setUp()
	if err != nil {
		msg := fmt.Sprintf("integration suite: no Redis containers: %v", err)
		if os.Getenv("REDLOCK_REQUIRE_DOCKER") == "1" {
			fmt.Fprintln(os.Stderr, "FAIL: "+msg+" (REDLOCK_REQUIRE_DOCKER=1)")
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "\n**********\nSKIPPING: "+msg+"\nRun scripts/test.sh to install and start Docker.\n**********")
		os.Exit(0)
	}
	code := m.Run()
	suite.tearDown()
	os.Exit(code)
}
