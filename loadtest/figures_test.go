package loadtest

import (
	"bytes"
	"context"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

// The cost figures from synthetic readings.
func TestCostFigures(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// 20,000 deliveries queued grew Redis from 1 MB to 18.2 MB: 860 bytes each.
	if got := BytesPerQueued(1_000_000+20_000*860, 1_000_000, 20_000); got != 860 {
		t.Errorf("bytes per queued %v, want 860", got)
	}
	if got := BytesPerQueued(5_000_000, 1_000_000, minQueuedForBytes-1); got != 0 {
		t.Errorf("bytes per queued below %d queued: %v, want 0", minQueuedForBytes, got)
	}
	if got := RateBetween(1000, 61_000, t0, t0.Add(4*time.Second)); got != 15_000 {
		t.Errorf("rate %v, want 15000", got)
	}
	if got := RateBetween(1000, 2000, t0, t0); got != 0 {
		t.Errorf("rate over no time %v", got)
	}
	// 1.5 s of CPU over 100,000 deliveries: 15 µs each.
	if got := MicrosPer(1500*time.Millisecond, 100_000); math.Abs(got-15) > 1e-9 {
		t.Errorf("µs per delivery %v, want 15", got)
	}
	if got := MicrosPer(time.Second, 0); got != 0 {
		t.Errorf("µs per no delivery %v", got)
	}
}

func TestRedisMemory(t *testing.T) {
	info := "# Memory\r\nused_memory:1200000\r\nused_memory_human:1.14M\r\nmem_clients_normal:150000\r\nmem_aof_buffer:50000\r\nmaxmemory:0\r\n"
	if got, err := RedisMemory(info); err != nil || got != 1_000_000 {
		t.Fatalf("memory %d, %v; want used_memory less the client and AOF buffers", got, err)
	}
	if got, err := RedisMemory("used_memory:42\n"); err != nil || got != 42 {
		t.Fatalf("memory %d, %v", got, err)
	}
	if _, err := RedisMemory("# Memory\r\nused_memory_human:1M\r\n"); err == nil {
		t.Fatal("no error without used_memory")
	}
}

func TestCheckTarget(t *testing.T) {
	for _, c := range []struct {
		v, limit float64
		op       string
		met      bool
	}{
		{250, 250, "<=", true}, {250.1, 250, "<=", false}, {0.5, 0.5, ">=", true}, {0.49, 0.5, ">=", false},
		{math.NaN(), 1, "<=", false}, {math.Inf(1), 1, ">=", false}, {1, 1, "==", false},
	} {
		if got := CheckTarget("x", c.v, c.op, c.limit); got.Met != c.met || got.Figure != "x" || got.Op != c.op {
			t.Errorf("%v %s %v: %+v, want met %v", c.v, c.op, c.limit, got, c.met)
		}
	}
}

// drainTestSamples is a drain read once a second: the first second
// paced by the schedule (nothing overdue), then three with a backlog, in
// one of which new entries outnumber the deliveries out, then the last
// one, cut short when the queues are seen empty.
func drainTestSamples(t0 time.Time, backlog bool) []DrainSample {
	s := []DrainSample{
		{At: t0, Depth: 60_000, Backlog: 4000, RedisCPU: 100 * time.Millisecond, Delivered: 100_000},
		{At: t0.Add(time.Second), Depth: 58_000, Backlog: 5000, CPU: 300 * time.Millisecond, RedisCPU: 400 * time.Millisecond, Delivered: 104_000},
		{At: t0.Add(2 * time.Second), Depth: 50_000, Backlog: 3000, CPU: 900 * time.Millisecond, RedisCPU: 700 * time.Millisecond, Delivered: 114_000},
		{At: t0.Add(3 * time.Second), Depth: 51_000, CPU: 1200 * time.Millisecond, RedisCPU: 1000 * time.Millisecond, Delivered: 119_000},
		{At: t0.Add(4 * time.Second), Depth: 45_000, CPU: 1600 * time.Millisecond, RedisCPU: 1500 * time.Millisecond, Delivered: 125_000},
		{At: t0.Add(4300 * time.Millisecond), Depth: 0, CPU: 1700 * time.Millisecond, RedisCPU: 1600 * time.Millisecond, Delivered: 170_000},
	}
	if !backlog {
		for i := range s {
			s[i].Backlog = 0
		}
	}
	return s
}

// The drain's rate is taken over the seconds that began with deliveries
// overdue; its span runs to the first sample that saw the queues empty.
func TestDrainOf(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

	// The first three seconds began with a backlog: (2,000 + 8,000 + 0,
	// the depth grew) out over 3 s, 1.2 s of CPU (0.9 s of Redis's),
	// 19,000 pairs delivered; empty 4.3 s after the first sample.
	d := DrainOf(drainTestSamples(t0, true))
	if d.PerSec != 10_000.0/3 || d.BacklogSec != 3 || !near(d.Cores, 0.4) || !near(d.RedisCores, 0.3) || !near(d.DeliveredPerSec, 19_000.0/3) ||
		d.PeakBacklog != 5000 || !d.Emptied || d.Sec != 4.3 {
		t.Errorf("drain: %+v; want 3333.3/s over 3 s, 0.4 cores, Redis 0.3, 6333.3 delivered/s, peak 5000, empty after 4.3 s", d)
	}
	// No backlog: no rate; not seen empty: the span to the last sample.
	s := drainTestSamples(t0, false)
	s = s[:len(s)-1]
	if d = DrainOf(s); d.PerSec != 0 || d.BacklogSec != 0 || d.Emptied || d.Sec != 4 {
		t.Errorf("drain without a backlog, never empty: %+v; want no rate, 4 s sampled", d)
	}
	// CPU not measured: no cores.
	s = drainTestSamples(t0, true)
	for i := range s {
		s[i].CPU, s[i].RedisCPU = 0, 0
	}
	if d = DrainOf(s); d.Cores != 0 || d.RedisCores != 0 || d.PerSec != 10_000.0/3 {
		t.Errorf("drain without CPU readings: %+v", d)
	}
	for _, s := range [][]DrainSample{nil, {{At: t0, Depth: 5, Backlog: 5}}, {{At: t0, Depth: 5}, {At: t0, Depth: 0}}} {
		if d := DrainOf(s); d.PerSec != 0 || d.Sec != 0 {
			t.Errorf("drain of %d samples over no time: %+v, want none", len(s), d)
		}
	}
}

// The outage's report: rates and targets from what its clock, the
// ledger's windows and the monitor's samples saw.
func TestOutageReport(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	o := &outage{lead: 6 * time.Second, warm: 6 * time.Second, refuse: 6 * time.Second, hang: 18 * time.Second,
		leadFrom: t0, leadTo: t0.Add(5 * time.Second), rate: 4000,
		warmAt: t0.Add(7 * time.Second), downAt: t0.Add(13 * time.Second), backAt: t0.Add(37 * time.Second),
		overdueAt: t0.Add(37 * time.Second), overdue: 60_000}
	// The lead-in delivered 10,000/s; the healthy pairs got 2,800/s in
	// the warm phase (6 s) and 2,700/s of 2,800/s offered while the
	// hosts were down (24 s).
	seen := outageSeen{lead: Window{Delivered: 50_000},
		warm:  Window{Offered: 16_800, Delivered: 16_800, Latency: Quantiles{P99: 4 * time.Millisecond}},
		down:  Window{Offered: 67_200, Delivered: 64_800, Latency: Quantiles{P99: 9 * time.Millisecond}},
		drain: drainTestSamples(t0.Add(37*time.Second), true)}
	for i := range seen.drain {
		seen.drain[i].Expected = seen.drain[i].Delivered + seen.drain[i].Depth + 10
	}
	row := Scenario{Name: "outage", RedisBytesPerQueued: 860, PeakQueueDepth: 60_000}
	o.report(&row, seen)
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-6 }
	if row.FloodPerSec != 10_000 || row.OfferedPerSec != 4000 || row.HealthyPerSec != 2700 || row.HealthyOfferedPerSec != 2800 ||
		row.HealthyWarmPerSec != 2800 || row.HealthyP99Ms != 9 || row.HealthyWarmP99Ms != 4 {
		t.Fatalf("rates: flood %v, offered %v, healthy %v of %v (warm %v), p99 %v (warm %v)", row.FloodPerSec, row.OfferedPerSec,
			row.HealthyPerSec, row.HealthyOfferedPerSec, row.HealthyWarmPerSec, row.HealthyP99Ms, row.HealthyWarmP99Ms)
	}
	if !near(row.DrainPerSec, 10_000.0/3) || !near(row.DrainRatio, 1.0/3) || row.DrainBacklogSec != 3 ||
		!near(row.DrainDeliveredPerSec, 19_000.0/3) || row.DrainDepth != 60_000 || row.DrainWallSec != 4.3 {
		t.Fatalf("drain %v (ratio %v), backlog %v s, depth %v, empty after %v s", row.DrainPerSec, row.DrainRatio, row.DrainBacklogSec,
			row.DrainDepth, row.DrainWallSec)
	}
	if row.DrainClaimsPerRetry != 0 {
		t.Errorf("claims per retry %v without claims read", row.DrainClaimsPerRetry)
	}
	// 1.2 s of CPU over 19,000 pairs delivered: 63.2 µs each; the lead-in
	// not measured.
	if !near(row.DrainUsPerDelivery, 1.2e6/19_000) || row.FloodUsPerDelivery != 0 {
		t.Errorf("µs per delivery: drain %v, lead-in %v", row.DrainUsPerDelivery, row.FloodUsPerDelivery)
	}
	notes := strings.Join(row.Notes, "\n")
	for _, want := range []string{"2700 delivered/s of 2800 offered/s (0.964), p99 9.0 ms; in the warm phase: 2800 delivered/s of 2800 offered/s (1.000)", "held 60000 deliveries",
		"10 produced pairs were neither delivered nor queued"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes do not say %q: %q", want, notes)
		}
	}
	want := map[string]bool{"redis_bytes_per_queued": false, "drain_ratio": false, "healthy_per_sec": true}
	if len(row.Targets) != len(want) {
		t.Fatalf("targets %+v", row.Targets)
	}
	for _, tg := range row.Targets {
		if met, ok := want[tg.Figure]; !ok || met != tg.Met {
			t.Errorf("target %+v, want met %v", tg, met)
		}
	}
	if h := row.Targets[2]; h.Limit != 0.95*2800 || !strings.Contains(h.Against, "offered rate") {
		t.Errorf("healthy target %+v: want 95%% of the healthy pairs' offered rate", h)
	}
	if strings.Contains(notes, "did not keep up") {
		t.Errorf("notes say the warm phase fell behind: %q", notes)
	}
	// Starved of CPU over the drain and while the hosts were down: notes.
	starved := seen
	starved.drain = drainTestSamples(t0.Add(37*time.Second), true)
	for i := range starved.drain {
		starved.drain[i].Wait = starved.drain[i].CPU * 2
	}
	starved.warmUse, starved.downUse, starved.leadUse = usage{0.5, 0.2, true}, usage{0.3, 0.9, true}, usage{0.5, 0, true}
	row = Scenario{Name: "outage"}
	o.report(&row, starved)
	if row.FloodUsPerDelivery != 50 { // 0.5 cores at 10,000/s
		t.Errorf("lead-in µs per delivery %v, want 50", row.FloodUsPerDelivery)
	}
	if n := strings.Join(row.Notes, "\n"); !strings.Contains(n, "longer than they ran during the drain") ||
		!strings.Contains(n, "while the hosts were down geckohook's threads waited for a CPU longer") {
		t.Errorf("notes do not say geckohook was starved: %q", n)
	}
	// A warm phase that fell behind its offered rate: a note.
	slow := seen
	slow.warm.Delivered = 12_000
	row = Scenario{Name: "outage"}
	o.report(&row, slow)
	if !strings.Contains(strings.Join(row.Notes, "\n"), "did not keep up") {
		t.Errorf("notes do not say the warm phase fell behind: %q", row.Notes)
	}
	// Made due 2 s after the return: the rate from that sample on, the
	// wall time from the return; claims and requests per delivery made
	// due (50,000 of them).
	o.overdueAt = t0.Add(39 * time.Second)
	o.claims, o.requests, o.claimsRead = [2]int64{1000, 126_000}, [2]int64{500, 75_500}, true
	row = Scenario{Name: "outage"}
	o.report(&row, seen)
	if row.DrainPerSec != 0 || row.DrainDepth != 50_000 || row.DrainWallSec != 4.3 || row.DrainClaimsPerRetry != 2.5 ||
		row.DrainAttemptsPerRetry != 1.5 || !strings.Contains(strings.Join(row.Notes, "\n"), "2.0 s after the hosts' return") {
		t.Errorf("drain %v of %v, empty after %v s, claims %v and attempts %v per retry, notes %q", row.DrainPerSec, row.DrainDepth,
			row.DrainWallSec, row.DrainClaimsPerRetry, row.DrainAttemptsPerRetry, row.Notes)
	}
	// Never seen empty: a note, and no wall time.
	seen.drain = seen.drain[:len(seen.drain)-1]
	row = Scenario{Name: "outage"}
	o.report(&row, seen)
	if row.DrainWallSec != 0 || !strings.Contains(strings.Join(row.Notes, "\n"), "not seen empty") {
		t.Errorf("drain %v, empty after %v s, claims %v and attempts %v per retry, notes %q", row.DrainPerSec, row.DrainWallSec,
			row.DrainClaimsPerRetry, row.DrainAttemptsPerRetry, row.Notes)
	}
	// The return never sampled: no drain figures, and a note saying so.
	seen.drain = nil
	row = Scenario{Name: "outage"}
	o.report(&row, seen)
	if row.DrainPerSec != 0 || row.DrainWallSec != 0 || !strings.Contains(strings.Join(row.Notes, "\n"), "not sampled") {
		t.Errorf("drain %v, empty after %v, notes %q", row.DrainPerSec, row.DrainWallSec, row.Notes)
	}
}

// The healthy scenario's targets are checked only for what was measured.
func TestHealthyTargets(t *testing.T) {
	if ts := healthyTargets(&Scenario{}); len(ts) != 0 {
		t.Fatalf("targets of nothing measured: %+v", ts)
	}
	ts := healthyTargets(&Scenario{CPURatio: 1.6, OwnP99Ms: 4, OfferedPerSec: 5000})
	if len(ts) != 2 || ts[0].Figure != "cpu_ratio" || ts[0].Met || ts[1].Figure != "own_p99_ms" || !ts[1].Met {
		t.Fatalf("targets %+v", ts)
	}
}

// The ceiling's client process sends the job and reports its own CPU.
func TestCeilingClientProcess(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	p := singles(20, 2, 2, nil)
	for i := range p.Apps {
		p.Apps[i].Secret = "s3cret"
	}
	f := newTestFarm(t, 2)
	f.Add(p)
	f.SetSecrets(p)
	// This test binary plays geckoload -ceiling-client (see TestMain).
	c, err := RunCeilingAt(t.Context(), f, p, CeilingOptions{Events: 4000, Workers: 8, MaxConnsPerHost: 8, Client: exe})
	if err != nil {
		t.Fatal(err)
	}
	if c.Requests != 4000 || c.PerSec <= 0 || c.Workers != 8 {
		t.Fatalf("ceiling %+v, want 4000 requests", c)
	}
	// 4,000 requests take well over one 10 ms clock tick of CPU, and far
	// less than a second each.
	if c.CPUPerRequest <= 0 || c.CPUPerRequest > time.Millisecond {
		t.Fatalf("client CPU per request %v", c.CPUPerRequest)
	}
	// In this process: the same requests, no CPU figure.
	in, err := RunCeilingAt(t.Context(), f, p, CeilingOptions{Events: 100, Workers: 4, MaxConnsPerHost: 8})
	if err != nil || in.Requests != 100 || in.CPUPerRequest != 0 {
		t.Fatalf("in-process ceiling %+v, %v", in, err)
	}
}

// A job the client cannot read is an error, not a silent zero.
func TestCeilingClientBadJob(t *testing.T) {
	var out bytes.Buffer
	if err := CeilingClient(context.Background(), strings.NewReader("{"), &out); err == nil || out.Len() != 0 {
		t.Fatalf("err %v, out %q", err, out.String())
	}
}

// TestMain lets this test binary be the ceiling's client process.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "-ceiling-client" {
		if err := CeilingClient(context.Background(), os.Stdin, os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The own latency is noted where it says something the row's latency does
// not: a paced phase, or receivers that took time to answer.
func TestOwnLatencyNote(t *testing.T) {
	has := func(s Scenario) bool { return strings.Contains(strings.Join(reportNotes(&s), "\n"), "own latency") }
	if has(Scenario{P50Ms: 3, P99Ms: 12.3, OwnP50Ms: 3, OwnP99Ms: 12.3}) {
		t.Error("a flood whose own latency is its latency notes it again")
	}
	if !has(Scenario{P99Ms: 12.3, OwnP99Ms: 2.1}) || !has(Scenario{P99Ms: 12.3, OwnP99Ms: 12.3, OfferedPerSec: 5000}) {
		t.Error("own latency not noted for slow receivers or a paced phase")
	}
}

// The paced phase's CPU is noted with each process's cores, and per
// delivery against the flood's.
func TestPacedCPUNote(t *testing.T) {
	notes := strings.Join(reportNotes(&Scenario{CPUUsPerDelivery: 13.84, PacedUsPerDelivery: 24.96,
		PacedCores: &PhaseCores{Geckohook: 0.954, Broker: 0.611, Harness: 0.523, Waiting: 0.8}}), "\n")
	want := "CPU over the paced phase: geckohook 0.95 cores (25.0 µs per delivery, 13.8 in the flood), the broker 0.61, " +
		"the harness's generator and receivers 0.52; geckohook's threads waited 0.80 s a second for a CPU"
	if !strings.Contains(notes, want) {
		t.Errorf("notes %q lack %q", notes, want)
	}
	if n := strings.Join(reportNotes(&Scenario{CPUUsPerDelivery: 13.84}), "\n"); strings.Contains(n, "paced phase") {
		t.Errorf("a run without a paced phase notes one: %q", n)
	}
}

func TestPhaseCPUSince(t *testing.T) {
	at := time.Unix(100, 0)
	before := phaseCPU{at: at, geckohook: time.Second, broker: 2 * time.Second, harness: 3 * time.Second, wait: 0}
	after := phaseCPU{at: at.Add(4 * time.Second), geckohook: 3 * time.Second, broker: 3 * time.Second,
		harness: 5 * time.Second, wait: 2 * time.Second}
	cores, us := after.since(before, 100_000)
	if want := (PhaseCores{Geckohook: 0.5, Broker: 0.25, Harness: 0.5, Waiting: 0.5}); cores != want || us != 20 {
		t.Errorf("since = %+v, %v µs per delivery; want %+v, 20", cores, us, want)
	}
	if cores, us := after.since(after, 10); cores != (PhaseCores{}) || us != 0 {
		t.Errorf("an empty phase gives %+v, %v", cores, us)
	}
}
