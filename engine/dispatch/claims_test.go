package dispatch

import (
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/shard"
)

// A claim that read a retry before its attempt's outcome was written (the
// attempt ended while the claim ran) does not send it again; a claim that
// begins after the outcome takes what it finds.
func TestClaimRacingAnOutcomeDoesNotResend(t *testing.T) {
	r := newClaims(4, ops.NewGauge(metrics.NewSet(), "geckohook_retries_in_flight"))
	end := time.Unix(1000, 0)
	if !r.take(shard.Lease{ID: "a", End: end}) {
		t.Fatal("a first claim was refused")
	}
	r.claiming()
	r.done("a") // a's outcome is written while the claim runs
	if r.take(shard.Lease{ID: "a", End: end.Add(time.Minute)}) {
		t.Fatal("a retry finished while the claim ran was taken again")
	}
	if !r.take(shard.Lease{ID: "b", End: end}) {
		t.Fatal("another retry of the same claim was refused")
	}
	if r.inFlight() != 1 {
		t.Fatalf("%d in flight, want 1 (b)", r.inFlight())
	}
	r.claiming()
	if !r.take(shard.Lease{ID: "a", End: end.Add(2 * time.Minute)}) {
		t.Fatal("a retry scheduled again and claimed by a later claim was refused")
	}
}
