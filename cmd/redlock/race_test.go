//go:build unix && race

package main

// raceEnabled is set when the tests run under the race detector: the
// command they build is then instrumented too.
const raceEnabled = true
