package dispatch

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// Observing an attempt runs on every delivery: it must not allocate.
func TestObserveAttemptAllocatesNothing(t *testing.T) {
	d := &Dispatcher{hosts: newHostGate(16, time.Second, time.Now)}
	d.register(metrics.NewSet())
	now := time.Now()
	dl := &delivery{produced: now.Add(-time.Second).UnixNano(), res: sender.Result{Outcome: contract.Success, Status: 200}}
	if n := testing.AllocsPerRun(1000, func() { d.m.observe(dl, 20*time.Millisecond, now) }); n != 0 {
		t.Fatalf("observe allocates %.1f times per attempt", n)
	}
}

func TestAttemptAndLatencyHistograms(t *testing.T) {
	set := metrics.NewSet()
	d := &Dispatcher{hosts: newHostGate(16, time.Second, time.Now)}
	d.register(set)
	now := time.Now()
	first := &delivery{produced: now.Add(-1500 * time.Millisecond).UnixNano(), res: sender.Result{Outcome: contract.Success, Status: 200}}
	d.m.observe(first, 30*time.Millisecond, now)
	retried := &delivery{queued: true, produced: now.Add(-time.Hour).UnixNano(), res: sender.Result{Outcome: contract.Gone, Status: 410}}
	d.m.observe(retried, 3*time.Millisecond, now)
	noAnswer := &delivery{produced: now.UnixNano(), res: sender.Result{Outcome: contract.Failure}}
	d.m.observe(noAnswer, 10*time.Second, now)
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for _, want := range []string{
		`geckohook_attempt_duration_seconds_bucket{outcome="success",le="0.05"} 1`,
		`geckohook_attempt_duration_seconds_count{outcome="gone"} 1`,
		`geckohook_attempt_duration_seconds_bucket{outcome="failure",le="5"} 0`,
		`geckohook_attempt_duration_seconds_count{outcome="failure"} 1`,
		// Only the answered first attempt: 1.5 s after it was produced.
		`geckohook_delivery_latency_seconds_bucket{le="1"} 0`,
		`geckohook_delivery_latency_seconds_bucket{le="2.5"} 1`,
		`geckohook_delivery_latency_seconds_count 1`,
		`geckohook_hosts_throttled 0`,
		`geckohook_offset_commit_failures_total 0`,
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("metrics lack %s:\n%s", want, b.String())
		}
	}
}

func TestThrottledHosts(t *testing.T) {
	now := time.Unix(1000, 0)
	g := newHostGate(64, time.Second, func() time.Time { return now })
	for _, h := range []string{"ok:443", "cut:443", "stuck:443"} {
		if a, _ := g.admit(h, &delivery{}); a != admitSend {
			t.Fatalf("%s not admitted", h)
		}
	}
	g.done(g.hosts["ok:443"], true, 0, time.Time{}) // ramping towards 64: not throttled
	g.done(g.hosts["cut:443"], false, 0, time.Time{})
	if n := g.throttled(); n != 1 {
		t.Fatalf("throttled = %d, want 1 (the cut host)", n)
	}
	now = now.Add(2 * time.Second) // stuck:443 has had no answer for 2 s
	if n := g.throttled(); n != 2 {
		t.Fatalf("throttled = %d, want 2 (cut and stalled)", n)
	}
}

// The gauge of retries in flight follows the claims taken and done, a
// retry claimed again while in flight counted once.
func TestRetriesInFlightGauge(t *testing.T) {
	g := ops.NewGauge(metrics.NewSet(), "geckohook_retries_in_flight")
	r := newClaims(4, g)
	end := time.Unix(1000, 0)
	for _, id := range []string{"a", "b", "a"} {
		r.take(shard.Lease{ID: id, End: end})
	}
	if n := g.Load(); n != 2 {
		t.Fatalf("after claiming a, b and a again: gauge %d, want 2", n)
	}
	r.done("a")
	if n := g.Load(); n != 1 || r.inFlight() != 1 {
		t.Fatalf("after a is done: gauge %d, in flight %d; want 1 and 1", n, r.inFlight())
	}
}
