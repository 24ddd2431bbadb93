//go:build unix

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// example is a shell block of the README's "Command line" section, and the
// output block that follows it.
type example struct {
	script string
	output []string
}

// readmeExamples returns the ```sh blocks of the README's "Command line"
// section, each with the plain ``` block after it, its expected output.
func readmeExamples(t *testing.T) []example {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, found := strings.Cut(string(readme), "\n## Command line\n")
	if !found {
		t.Fatal(`README.md has no "## Command line" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var examples []example
	var block []string
	fence := "" // the opening line of the block being read, if any
	for line := range strings.Lines(section) {
		line = strings.TrimSuffix(line, "\n")
		switch {
		case fence == "" && strings.HasPrefix(line, "```"):
			fence, block = line, nil
		case fence != "" && line == "```":
			switch {
			case fence == "```sh":
				examples = append(examples, example{script: strings.Join(block, "\n") + "\n"})
			case fence == "```" && len(examples) > 0 && examples[len(examples)-1].output == nil:
				examples[len(examples)-1].output = block
			}
			fence = ""
		case fence != "":
			block = append(block, line)
		}
	}
	return examples
}

// outputPattern turns a line of expected output into a pattern in which
// every number matches any number: durations, counts and tokens vary.
func outputPattern(line string) *regexp.Regexp {
	number := regexp.MustCompile(`[0-9]+(\.[0-9]+)?`)
	var pattern strings.Builder
	last := 0
	for _, loc := range number.FindAllStringIndex(line, -1) {
		pattern.WriteString(regexp.QuoteMeta(line[last:loc[0]]))
		pattern.WriteString(`[0-9]+(\.[0-9]+)?`)
		last = loc[1]
	}
	pattern.WriteString(regexp.QuoteMeta(line[last:]))
	return regexp.MustCompile("^" + pattern.String() + "$")
}

// The shell examples of the README's "Command line" section run as shown,
// with redlock on the PATH, and print what the README says they print (up to
// numbers, and to the order of stdout and stderr lines), with the masters of
// the test in REDLOCK_URLS instead of a Redis on localhost.
func TestREADMECommandLine(t *testing.T) {
	examples := readmeExamples(t)
	if len(examples) < 2 {
		t.Fatalf("found %d shell examples with their output in the README's Command line section; want at least 2", len(examples))
	}
	masters := startMasters(t, 3)
	dir := t.TempDir()
	env := append(os.Environ(), urlsEnv(masters), "PATH="+filepath.Dir(binary)+":"+os.Getenv("PATH"))
	if os.Getenv("GORACE") == "" {
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	for i, ex := range examples {
		if ex.output == nil {
			t.Fatalf("example %d has no output block after it:\n%s", i+1, ex.script)
		}
		cmd := exec.Command("sh", "-c", ex.script)
		cmd.Dir, cmd.Env = dir, env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.WaitDelay = time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
		err := cmd.Wait()
		timer.Stop()
		if err != nil {
			t.Errorf("example %d: %v\n%s\noutput:\n%s", i+1, err, ex.script, out.String())
			continue
		}
		got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(got) != len(ex.output) {
			t.Errorf("example %d printed %d lines; the README shows %d\n%s\noutput:\n%s", i+1, len(got), len(ex.output), ex.script, out.String())
			continue
		}
		for _, want := range ex.output {
			pattern := outputPattern(want)
			matched := false
			for _, line := range got {
				matched = matched || pattern.MatchString(line)
			}
			if !matched {
				t.Errorf("example %d printed no line like the README's %q\n%s\noutput:\n%s", i+1, want, ex.script, out.String())
			}
		}
	}
}
