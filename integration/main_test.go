package integration

import (
	"flag"
	"fmt"
	"os"
	"testing"
)

// TestMain starts the Redis containers once for the suite, after removing
// those that earlier runs left when they died. Without Docker the
// suite skips with a loud message, unless REDLOCK_REQUIRE_DOCKER=1 (set by
// scripts/test.sh under CI), in which case it fails.
func TestMain(m *testing.M) {
	if os.Getenv("REDLOCK_CHAOS_WORKER") != "" || os.Getenv("REDLOCK_SEMAPHORE_WORKER") != "" {
		os.Exit(m.Run()) // a worker process: the parent owns the containers
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
