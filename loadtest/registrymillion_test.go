package loadtest

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestUnionQuantileOfDelayHistograms(t *testing.T) {
	page := func(counts string) string {
		// Cumulative counts at 1 ms, 10 ms, 100 ms; 100 observations.
		c := strings.Fields(counts)
		return "# TYPE x histogram\n" +
			`geckohook_registry_change_delay_seconds_bucket{le="0.001"} ` + c[0] + "\n" +
			`geckohook_registry_change_delay_seconds_bucket{le="0.01"} ` + c[1] + "\n" +
			`geckohook_registry_change_delay_seconds_bucket{le="0.1"} ` + c[2] + "\n" +
			`geckohook_registry_change_delay_seconds_bucket{le="+Inf"} 100` + "\n" +
			"geckohook_registry_change_delay_seconds_sum 1.5\ngeckohook_registry_change_delay_seconds_count 100\n"
	}
	read := func(counts string) histogram {
		t.Helper()
		h, err := parseHistogram(page(counts), "geckohook_registry_change_delay_seconds")
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	zero := histogram{bounds: []float64{.001, .01, .1}, cum: []int{0, 0, 0}}
	a, b := read("90 99 100"), read("50 100 100")
	if a.minus(zero).count != 100 || a.above(0.001) != 10 {
		t.Fatalf("parsed %+v", a)
	}
	// One process alone: 1 of 100 above 10 ms is within 1%.
	if got := unionQuantile([]histogram{a}, 0.99); got != 0.01 {
		t.Errorf("p99 of one process = %v, want 0.01", got)
	}
	// Two: 1 + 0 above 10 ms still within 1%; at 1 ms 10 + 50 is not.
	if got := unionQuantile([]histogram{a, b}, 0.99); got != 0.01 {
		t.Errorf("p99 of two = %v, want 0.01", got)
	}
	if got := unionQuantile([]histogram{read("90 98 100"), read("50 99 100")}, 0.99); got != 0.1 {
		t.Errorf("p99 of two, 2 + 1 above 10 ms = %v, want 0.1", got)
	}
	if got := unionQuantile([]histogram{read("0 0 90")}, 0.99); !math.IsInf(got, 1) {
		t.Errorf("p99 beyond the last bound = %v, want +Inf", got)
	}
	if _, err := parseHistogram("other 1\n", "geckohook_registry_change_delay_seconds"); err == nil {
		t.Error("a page without the histogram parsed")
	}
}

func TestRegistryFiguresInReport(t *testing.T) {
	s := Scenario{Name: "registry-million", Webhooks: 200000, RegistryLoadMs: 1234.567, RegistryBytesPerWebhook: 256.04, ChangeP99Ms: 50}
	raw, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]float64{"registry_load_ms": 1234.57, "registry_bytes_per_webhook": 256, "change_p99_ms": 50} {
		if back[k] != want {
			t.Errorf("%s = %v, want %v", k, back[k], want)
		}
	}
	s.Targets = []Target{CheckTarget("change_p99_ms", s.ChangeP99Ms, "<=", targetChangeP99Ms)}
	if n := strings.Join(reportNotes(&s), "\n"); !strings.Contains(n, "loaded at start in 1235 ms") || !strings.Contains(n, "256 heap bytes per webhook") ||
		!strings.Contains(n, "target change_p99_ms <= 1000: 50 met") {
		t.Errorf("notes do not show the registry figures: %s", n)
	}
	if n := registryNote(&Scenario{Name: "healthy"}); n != "" {
		t.Errorf("a scenario without registry figures has the note %q", n)
	}
}
