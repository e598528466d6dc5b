package dispatch

import (
	"testing"
	"time"
)

// A run of failed fetches logs its first at once, then one line each
// failureLogEvery counting the failures since the last line; the first
// fetch that works ends the run, and the next failure is logged at once.
func TestFetchFailuresAreLoggedFirstThenEveryInterval(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	var f fetchFailures
	if n, took := f.recovered(t0); n != 0 || took != 0 {
		t.Fatalf("recovered without failures: %d, %v; want 0, 0", n, took)
	}
	var logged []int
	var at time.Duration
	for ; at <= 2*failureLogEvery; at += fetchRetry {
		if n := f.failed(t0.Add(at)); n > 0 {
			logged = append(logged, n)
		}
	}
	perLine := int(failureLogEvery / fetchRetry) // 50
	want := []int{1, perLine, perLine}
	if len(logged) != len(want) || logged[0] != want[0] || logged[1] != want[1] || logged[2] != want[2] {
		t.Fatalf("lines logged covering %v failures; want %v", logged, want)
	}
	failures := 2*perLine + 1
	n, took := f.recovered(t0.Add(at))
	if n != failures || took != at {
		t.Fatalf("recovered: %d failures over %v; want %d over %v", n, took, failures, at)
	}
	if n := f.failed(t0.Add(at + time.Second)); n != 1 {
		t.Fatalf("the first failure after a recovery covers %d; want 1, logged at once", n)
	}
	if n := f.failed(t0.Add(at + time.Second + fetchRetry)); n != 0 {
		t.Fatalf("the second failure of a new run covers %d; want 0, not logged", n)
	}
}
