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
	// 30,000 drained in 12.5 s.
	if got := DrainRate(30_000, t0, t0.Add(12500*time.Millisecond)); got != 2400 {
		t.Errorf("drain %v, want 2400", got)
	}
	for _, c := range []struct {
		n        int64
		from, to time.Time
	}{{30_000, t0, t0}, {30_000, t0, t0.Add(-time.Second)}, {0, t0, t0.Add(time.Second)}} {
		if got := DrainRate(c.n, c.from, c.to); got != 0 {
			t.Errorf("drain of %d over %v: %v, want 0", c.n, c.to.Sub(c.from), got)
		}
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
		{At: t0, Depth: 60_000, Delivered: 100_000},
		{At: t0.Add(time.Second), Depth: 58_000, Backlog: 5000, CPU: 300 * time.Millisecond, Delivered: 104_000},
		{At: t0.Add(2 * time.Second), Depth: 50_000, Backlog: 3000, CPU: 900 * time.Millisecond, Delivered: 114_000},
		{At: t0.Add(3 * time.Second), Depth: 51_000, Backlog: 100, CPU: 1200 * time.Millisecond, Delivered: 119_000},
		{At: t0.Add(4 * time.Second), Depth: 45_000, CPU: 1600 * time.Millisecond, Delivered: 125_000},
		{At: t0.Add(4300 * time.Millisecond), Depth: 0, CPU: 1700 * time.Millisecond, Delivered: 170_000},
	}
	if !backlog {
		for i := range s {
			s[i].Backlog = 0
		}
	}
	return s
}

// The drain's rate is taken over the seconds that began with a backlog;
// with none, it is the best second's, a lower bound.
func TestDrainOf(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

	// (8,000 + 0, the depth grew, + 6,000) out over 3 s, 1.3 s of CPU,
	// 21,000 pairs delivered in all.
	d := DrainOf(drainTestSamples(t0, true))
	if !near(d.PerSec, 14_000.0/3) || d.LowerBound || d.BacklogSec != 3 || !near(d.Cores, 1.3/3) || d.PeakBacklog != 5000 ||
		d.DeliveredPerSec != 7000 {
		t.Errorf("drain with a backlog: %+v; want 4666.7/s over 3 s, 0.433 cores, 7000 delivered/s, peak 5000", d)
	}

	// No backlog: the best second (8,000 in the second second), not the
	// last 0.3 s, whose 45,000 would read as 150,000/s.
	d = DrainOf(drainTestSamples(t0, false))
	if d.PerSec != 8000 || !d.LowerBound || d.BacklogSec != 0 || !near(d.Cores, 0.6) || d.DeliveredPerSec != 10_000 {
		t.Errorf("drain without a backlog: %+v; want the best second, 8000/s at 0.6 cores and 10000 delivered/s, a lower bound", d)
	}

	// Produced pairs not read: no split by Kafka's backlog.
	if d.FreePerSec != 0 || d.FreeSec != 0 {
		t.Errorf("drain without produced pairs: free %v/s over %v s; want none", d.FreePerSec, d.FreeSec)
	}
	// With them: the seconds from samples 0 and 1 began with the flood's
	// backlog in Kafka (70,000 and 5,000 pairs neither delivered nor
	// queued), those from 2 and 3 with at most kafkaSettled (below zero
	// when a delivered retry is still in its queue): of the three
	// seconds with an overdue backlog, the last two count (0, the depth
	// grew, and 6,000 out).
	s := drainTestSamples(t0, true)
	for i, k := range []int64{70_000, 5000, kafkaSettled, -200, 0, 0} {
		s[i].Expected = s[i].Delivered + s[i].Depth + k
	}
	if d = DrainOf(s); d.FreePerSec != 3000 || d.FreeSec != 2 || !near(d.PerSec, 14_000.0/3) {
		t.Errorf("drain split by Kafka's backlog: %+v; want 3000/s over 2 s, and 4666.7/s in all", d)
	}
	s[1].Expected = s[1].Delivered + s[1].Depth // settled from sample 1 on: all three
	if d = DrainOf(s); !near(d.FreePerSec, 14_000.0/3) || d.FreeSec != 3 {
		t.Errorf("drain split by Kafka's backlog: %+v; want 4666.7/s over 3 s", d)
	}

	// CPU not measured: no cores.
	s = drainTestSamples(t0, true)
	for i := range s {
		s[i].CPU = 0
	}
	if d = DrainOf(s); d.Cores != 0 || !near(d.PerSec, 14_000.0/3) {
		t.Errorf("drain without CPU readings: %+v", d)
	}

	for _, s := range [][]DrainSample{nil, {{At: t0, Depth: 5, Backlog: 5}}, {{At: t0, Depth: 5}, {At: t0, Depth: 0}}} {
		if d := DrainOf(s); d.PerSec != 0 || d.LowerBound || d.BacklogSec != 0 {
			t.Errorf("drain of %d samples over no time: %+v, want none", len(s), d)
		}
	}
}

// The outage's report: rates and targets from what its clock saw.
func TestOutageReport(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	o := &outage{warm: 6 * time.Second, refuse: 12 * time.Second, hang: 12 * time.Second,
		warmRate: 10_000, healthyRate: 9_600, backAt: t0, emptyAt: t0.Add(20 * time.Second), drained: 60_000,
		samples: drainTestSamples(t0, true)}
	row := Scenario{Name: "outage", RedisBytesPerQueued: 860, PeakQueueDepth: 60_000}
	o.report(&row, 0)
	if math.Abs(row.DrainPerSec-14_000.0/3) > 1e-6 || math.Abs(row.DrainRatio-1.4/3) > 1e-6 || row.DrainBacklogSec != 3 ||
		row.DrainDeliveredPerSec != 7000 || row.HealthyPerSec != 9_600 {
		t.Fatalf("drain %v over %v s, ratio %v, healthy %v", row.DrainPerSec, row.DrainBacklogSec, row.DrainRatio, row.HealthyPerSec)
	}
	// The schedule-paced figure: 60,000 over the 20 s until empty.
	if row.DrainPacedPerSec != 3000 || row.DrainWallSec != 20 {
		t.Fatalf("paced drain %v over %v s, want 3000/s over 20 s", row.DrainPacedPerSec, row.DrainWallSec)
	}
	if notes := strings.Join(row.Notes, "\n"); !strings.Contains(notes, "3.0 s of the drain began with deliveries due for 1s or more") {
		t.Errorf("notes do not say which seconds the drain rate covers: %q", notes)
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
	if h := row.Targets[2]; h.Limit != 9_500 || !strings.Contains(h.Against, "warm phase") {
		t.Errorf("healthy target %+v: want 95%% of the warm phase's rate", h)
	}
	// Against the healthy scenario when it ran: 9,600 is short of 95% of 10,500.
	row = Scenario{Name: "outage"}
	o.report(&row, 10_500)
	if h := row.Targets[len(row.Targets)-1]; h.Figure != "healthy_per_sec" || h.Met || !strings.Contains(h.Against, "healthy scenario") {
		t.Errorf("healthy target %+v", h)
	}
	// Nothing overdue: the best second, and a note that it is a lower bound.
	o.samples = drainTestSamples(t0, false)
	row = Scenario{Name: "outage"}
	o.report(&row, 0)
	if row.DrainPerSec != 8000 || row.DrainBacklogSec != 0 || !strings.Contains(strings.Join(row.Notes, "\n"), "a lower bound of its capacity") {
		t.Errorf("drain %v over %v s, notes %q", row.DrainPerSec, row.DrainBacklogSec, row.Notes)
	}
	// Queues never seen empty and no samples: no drain rate, and a note
	// saying so.
	o.emptyAt, o.samples = time.Time{}, nil
	row = Scenario{Name: "outage"}
	o.report(&row, 0)
	if row.DrainPerSec != 0 || row.DrainPacedPerSec != 0 || row.DrainWallSec != 0 ||
		!strings.Contains(strings.Join(row.Notes, "\n"), "not seen empty") {
		t.Errorf("drain %v, paced %v, notes %q", row.DrainPerSec, row.DrainPacedPerSec, row.Notes)
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
