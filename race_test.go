//go:build race

package redlock

// raceEnabled is set when the tests run under the race detector, which
// slows the process down several times.
const raceEnabled = true
