package dispatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/shard"
)

// While most of the retry window is in flight the poller waits for a
// quarter of it to free (or claimGather) before it claims, instead of
// claiming the few slots one outcome frees; with slots enough it claims
// at once.
func TestPollerGathersFreeSlotsBeforeAClaim(t *testing.T) {
	r := newClaims(8, ops.NewGauge(metrics.NewSet(), "geckohook_retries_in_flight"))
	end := time.Unix(1000, 0)
	for i := range 6 {
		r.take(shard.Lease{ID: fmt.Sprint(i), End: end})
	}
	never := make(chan time.Time)
	extend := func() { t.Error("extended leases without a tick") }
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if !r.gather(done, time.Hour, never, extend) {
		t.Fatal("with a quarter of the window free the poller waited")
	}
	r.take(shard.Lease{ID: "6", End: end}) // one slot free of 8
	if r.gather(done, time.Hour, never, extend) {
		t.Fatal("with one slot free of 8 the poller claimed at once")
	}
	if !r.gather(context.Background(), time.Millisecond, never, extend) {
		t.Fatal("the poller did not claim once its wait ran out")
	}
	returned := make(chan bool, 1)
	go func() { returned <- r.gather(context.Background(), time.Hour, never, extend) }()
	r.done("0")
	select {
	case ok := <-returned:
		if !ok {
			t.Fatal("gather reported an ended context")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the poller still waited with two slots of 8 free")
	}
	tick := make(chan time.Time, 1)
	tick <- end
	extended := make(chan struct{})
	if !r.take(shard.Lease{ID: "7", End: end}) { // one slot free again
		t.Fatal("a new claim was refused")
	}
	go func() {
		returned <- r.gather(context.Background(), time.Hour, tick, func() { close(extended); r.done("1") })
	}()
	select {
	case <-extended:
	case <-time.After(10 * time.Second):
		t.Fatal("the leases in flight were not extended while the poller waited")
	}
	if !<-returned {
		t.Fatal("gather reported an ended context")
	}
}
