package redlock

import (
	"os"
	"regexp"
	"testing"
)

// go.mod and the README name the same Go version.
func TestREADMEGoVersionMatchesGoMod(t *testing.T) {
	mod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
	got := regexp.MustCompile(`Requires Go (\d+\.\d+) or later`).FindSubmatch(readme)
	if want == nil || got == nil || string(got[1]) != string(want[1]) {
		t.Errorf("README requires Go %s; go.mod says %s", got, want)
	}
}
