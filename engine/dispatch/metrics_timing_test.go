package dispatch

import (
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/sender"
)

// What the metrics add to one attempt, from every worker at once.
func BenchmarkObserveAttempt(b *testing.B) {
	d := &Dispatcher{hosts: newHostGate(16, time.Second, time.Now)}
	d.register(metrics.NewSet())
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		dl := &delivery{produced: now.Add(-time.Second).UnixNano(), res: sender.Result{Outcome: contract.Success, Status: 200}}
		for pb.Next() {
			d.m.observe(dl, 20*time.Millisecond, now)
			d.Stats.Delivered.Inc()
		}
	})
}
