package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The harness, its test helpers and the benchmarks never reach the
// production binary.
func TestHarnessStaysOutOfGeckohook(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/geckohook/geckohook/cmd/geckohook").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "github.com/geckohook/geckohook/engine/dispatch\n") {
		t.Fatalf("go list printed no geckohook package:\n%s", out)
	}
	for _, pkg := range []string{"/loadtest", "/bench", "/internal/testenv", "/cmd/geckoload"} {
		if strings.Contains(string(out), "github.com/geckohook/geckohook"+pkg+"\n") {
			t.Errorf("geckohook imports %s", pkg)
		}
	}
}
