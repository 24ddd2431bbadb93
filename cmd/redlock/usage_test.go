//go:build unix

package main

import (
	"strings"
	"testing"
)

// Usage errors exit 64 with one line on stderr and nothing on stdout; -h
// prints the usage, with an example, on stdout and exits 0. None of these
// contacts Redis.
func TestUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		out  []string // in stdout, for code 0
		err  string   // in stderr's one line, otherwise
	}{
		{"help", []string{"-h"}, 0, []string{"Usage:", "redlock run ", "redlock status ", "redlock run -wait 0 nightly-report -- /usr/local/bin/report"}, ""},
		{"help word", []string{"help"}, 0, []string{"Usage:"}, ""},
		{"run help", []string{"run", "-h"}, 0, []string{"Usage:", "Examples:", "-wait D", "-grace D", "-fencing", "-url URL", "-ttl duration", "REDLOCK_TOKEN", "-n N", "semaphore"}, ""},
		{"run help after name", []string{"run", "job", "-h", "--", "true"}, 0, []string{"Usage:"}, ""},
		{"status help", []string{"status", "-h"}, 0, []string{"Usage:", "Examples:", "-json", "-url URL", "held ttl=D waiters=N", "-n N", "held=H/N waiters=W"}, ""},
		{"status without name", []string{"status"}, exitUsage, nil, "missing NAME"},
		{"status with two names", []string{"status", "a", "b"}, exitUsage, nil, `unexpected "b" after NAME`},
		{"status bad flag", []string{"status", "-ttl", "1s", "job"}, exitUsage, nil, "flag provided but not defined: -ttl"},
		{"status brace in name", []string{"status", "{job"}, exitUsage, nil, "has a brace"},
		{"unknown subcommand", []string{"lock", "job"}, exitUsage, nil, `unknown subcommand "lock"`},
		{"bad flag", []string{"run", "-bogus", "job", "--", "true"}, exitUsage, nil, "flag provided but not defined: -bogus"},
		{"bad flag after name", []string{"run", "job", "-bogus", "--", "true"}, exitUsage, nil, "flag provided but not defined: -bogus"},
		{"bad duration", []string{"run", "-wait", "soon", "job", "--", "true"}, exitUsage, nil, `invalid value "soon" for flag -wait`},
		{"negative wait", []string{"run", "-wait", "-1s", "job", "--", "true"}, exitUsage, nil, "must not be negative"},
		{"negative grace", []string{"run", "-grace", "-1s", "job", "--", "true"}, exitUsage, nil, "-grace -1s is negative"},
		{"zero ttl", []string{"run", "-ttl", "0", "job", "--", "true"}, exitUsage, nil, "-ttl 0s is not a positive whole number of milliseconds"},
		{"fractional ttl", []string{"run", "-ttl", "1500us", "job", "--", "true"}, exitUsage, nil, "-ttl 1.5ms"},
		{"ttl too small", []string{"run", "-ttl", "3ms", "job", "--", "true"}, exitUsage, nil, "-ttl 3ms: TTL 3ms is too small"},
		{"ttl too small, bad url", []string{"run", "-url", "http://127.0.0.1:1/", "-ttl", "5ms", "job", "--", "true"}, exitUsage, nil, "-ttl 5ms: TTL 5ms is too small"},
		{"empty url", []string{"run", "-url", "", "job", "--", "true"}, exitUsage, nil, "empty URL"},
		{"no name", []string{"run", "--", "true"}, exitUsage, nil, "missing NAME"},
		{"no dashes", []string{"run", "job", "true"}, exitUsage, nil, "missing -- between NAME and COMMAND"},
		{"no dashes, no command", []string{"run", "job"}, exitUsage, nil, "missing -- between NAME and COMMAND"},
		{"no command", []string{"run", "job", "--"}, exitUsage, nil, "missing COMMAND after --"},
		{"brace in name", []string{"run", "a{b}", "--", "true"}, exitUsage, nil, "has a brace"},
		{"zero permits", []string{"run", "-n", "0", "job", "--", "true"}, exitUsage, nil, `invalid value "0" for flag -n: 0 permits is outside [1, 1024]`},
		{"negative permits", []string{"run", "-n", "-2", "job", "--", "true"}, exitUsage, nil, "-2 permits is outside [1, 1024]"},
		{"too many permits", []string{"run", "-n", "1025", "job", "--", "true"}, exitUsage, nil, "1025 permits is outside [1, 1024]"},
		{"permits not a number", []string{"run", "-n", "four", "job", "--", "true"}, exitUsage, nil, `invalid value "four" for flag -n`},
		{"fencing with permits", []string{"run", "-fencing", "-n", "2", "job", "--", "true"}, exitUsage, nil, "-fencing does not apply to a semaphore (-n)"},
		{"status zero permits", []string{"status", "-n", "0", "job"}, exitUsage, nil, "0 permits is outside [1, 1024]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run(tt.args, nil, strings.NewReader(""), &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("redlock %q exited %d; want %d\nstdout: %s\nstderr: %s", tt.args, code, tt.code, stdout.String(), stderr.String())
			}
			if tt.code == 0 {
				for _, want := range tt.out {
					if !strings.Contains(stdout.String(), want) {
						t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
					}
				}
				if stderr.Len() != 0 {
					t.Errorf("stderr = %q; want nothing", stderr.String())
				}
				return
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q; want nothing", stdout.String())
			}
			line := stderr.String()
			if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") || !strings.HasPrefix(line, "redlock: ") {
				t.Errorf("stderr = %q; want one line starting with \"redlock: \"", line)
			}
			if !strings.Contains(line, tt.err) {
				t.Errorf("stderr = %q; want it to contain %q", line, tt.err)
			}
		})
	}
}

// With no arguments, redlock prints its usage on stderr and exits 64.
func TestNoArguments(t *testing.T) {
	var stdout, stderr strings.Builder
	if code := run(nil, nil, strings.NewReader(""), &stdout, &stderr); code != exitUsage {
		t.Errorf("redlock exited %d; want %d", code, exitUsage)
	}
	if !strings.Contains(stderr.String(), "Usage:") || stdout.Len() != 0 {
		t.Errorf("stdout = %q, stderr = %q; want the usage on stderr", stdout.String(), stderr.String())
	}
}

func TestMasters(t *testing.T) {
	tests := []struct {
		flags urlFlag
		env   []string
		want  []string
	}{
		{nil, nil, nil},
		{nil, []string{"REDLOCK_URLS="}, nil},
		{nil, []string{"REDLOCK_URLS=redis://a:1/0, redis://b:2/0,,"}, []string{"redis://a:1/0", "redis://b:2/0"}},
		{urlFlag{"redis://c:3/0"}, []string{"REDLOCK_URLS=redis://a:1/0"}, []string{"redis://c:3/0"}},
		{nil, []string{"REDLOCK_URLS=redis://a:1/0", "REDLOCK_URLS=redis://b:2/0"}, []string{"redis://b:2/0"}},
	}
	for _, tt := range tests {
		got := masters(tt.flags, tt.env)
		if strings.Join(got, " ") != strings.Join(tt.want, " ") || len(got) != len(tt.want) {
			t.Errorf("masters(%q, %q) = %q; want %q", tt.flags, tt.env, got, tt.want)
		}
	}
}

func TestChildEnv(t *testing.T) {
	env := []string{"PATH=/bin", "REDLOCK_TOKEN=99", "REDLOCK_NAME=outer", "REDLOCK_TERM=4", "HOME=/root"}
	got := strings.Join(childEnv(env, "job", nil), " ")
	if want := "PATH=/bin HOME=/root REDLOCK_NAME=job"; got != want {
		t.Errorf("childEnv without fencing = %q; want %q", got, want)
	}
	got = strings.Join(childEnv(env, "job", []string{"REDLOCK_TOKEN=7"}), " ")
	if want := "PATH=/bin HOME=/root REDLOCK_NAME=job REDLOCK_TOKEN=7"; got != want {
		t.Errorf("childEnv with fencing = %q; want %q", got, want)
	}
}
