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
	r.claiming(end)
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
	r.claiming(end)
	if !r.take(shard.Lease{ID: "a", End: end.Add(2 * time.Minute)}) {
		t.Fatal("a retry scheduled again and claimed by a later claim was refused")
	}
}

// The lease an outcome is written under carries the end of a claim or an
// extension whose result is not recorded yet, which the delivery may
// already hold in the queue, and drops it once recorded.
func TestOutcomeLeaseCarriesAPendingEnd(t *testing.T) {
	r := newClaims(4, ops.NewGauge(metrics.NewSet(), "geckohook_retries_in_flight"))
	end := time.Unix(1000, 0)
	r.take(shard.Lease{ID: "a", End: end})
	check := func(what string, wantEnd, wantPending time.Time) {
		t.Helper()
		l, ok := r.lease("a")
		if !ok || !l.End.Equal(wantEnd) || !l.Pending.Equal(wantPending) {
			t.Fatalf("%s: lease %v %v (held %v), want end %v pending %v", what, l.End, l.Pending, ok, wantEnd, wantPending)
		}
	}
	check("claimed", end, time.Time{})
	r.claiming(end.Add(time.Minute))
	check("while a claim runs", end, end.Add(time.Minute))
	r.take(shard.Lease{ID: "a", End: end.Add(time.Minute)}) // the claim re-leased it
	r.settled()
	check("re-leased by the claim", end.Add(time.Minute), time.Time{})
	ls := r.extending(end.Add(2 * time.Minute))
	if len(ls) != 1 || !ls[0].End.Equal(end.Add(time.Minute)) {
		t.Fatalf("leases to extend: %v", ls)
	}
	check("while an extension runs", end.Add(time.Minute), end.Add(2*time.Minute))
	r.extended(ls, end.Add(2*time.Minute))
	check("extended", end.Add(2*time.Minute), time.Time{})
	r.extending(end.Add(3 * time.Minute)) // its reply is lost
	check("after an extension failed", end.Add(2*time.Minute), end.Add(3*time.Minute))
}
