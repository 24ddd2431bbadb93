//go:build unix && !(linux || darwin || freebsd)

package main

import "io"

// foregroundTerminal reports no terminal where redlock does not know how to
// hand one over: COMMAND then cannot read from redlock's terminal.
func foregroundTerminal(io.Reader) (int, bool) { return 0, false }

func inBackground() {}

func takeForeground(int) error { return nil }
