package loadtest

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// reportTestSeries is n seconds of plausible figures.
func reportTestSeries(n int) []Point {
	ps := make([]Point, n)
	for i := range ps {
		f := float64(i)
		ps[i] = Point{
			T: f + 1, DeliveredPerSec: 40000 + 5000*math.Sin(f/10), P50Ms: 2 + math.Sin(f/7), P99Ms: 12 + 3*math.Cos(f/5),
			RetryDepth: int64(i * 37 % 500), DueBacklog: int64(i * 11 % 300), RSSBytes: int64(200+i%50) << 20, CPUCores: 3.2 + 0.4*math.Sin(f),
			CPUWaiting: float64(i%2) / 2,
		}
	}
	return ps
}

// reportTestFull is a scenario with every field set.
func reportTestFull() Scenario {
	return Scenario{
		Name: "partitions", Variant: "8 partitions, 2 dispatchers",
		Events: 1000, Deliveries: 3988, DeliveriesPerSec: 48211.37, CeilingPerSec: 52000, Ratio: 48211.37 / 52000,
		P50Ms: 1.23456, P95Ms: 4.5, P99Ms: 12.345, MaxMs: 254.2,
		Missing: 12, Duplicates: 1, BadSignatures: 2, PeakRSSBytes: 212 << 20,
		DurationSec: 60.1234, OfferedPerSec: 20000, LatencyNote: "paced at 50% of the sustained rate",
		HealthyPerSec: 4123.45, Deleted: 3, Queued: 4, IDMismatches: 5, Unexpected: 6, PeakRetryDepth: 7,
		Webhooks: 100000, Partitions: 8, Dispatchers: 2, BytesPerWebhook: 1234.56,
		RedisBytesPerQueued: 860.04, PeakQueueDepth: 20000, DrainPerSec: 12345.67, DrainRatio: 0.51234,
		DrainBacklogSec: 12.345, DrainCores: 0.4567, DrainDeliveredPerSec: 15432.19, DrainWallSec: 43.567, DrainDepth: 61234,
		DrainClaimsPerRetry: 2.456, DrainAttemptsPerRetry: 1.234, DrainUsPerDelivery: 31.04, FloodUsPerDelivery: 24.96,
		HealthyOfferedPerSec: 4200.04, HealthyWarmPerSec: 4199.96, HealthyP99Ms: 8.765, HealthyWarmP99Ms: 4.321, FloodPerSec: 24000.04,
		CPUUsPerDelivery: 22.456, CeilingCPUUsPerRequest: 9.0049, CPURatio: 22.456 / 9.0049, OwnP50Ms: 0.8765, OwnP99Ms: 7.654,
		PacedUsPerDelivery: 24.96, PacedCores: &PhaseCores{Geckohook: 0.954, Broker: 0.611, Harness: 0.5234, Waiting: 0.8},
		Targets: []Target{CheckTarget("redis_bytes_per_queued", 860.04, "<=", 250), {Figure: "healthy_per_sec", Value: 4123.45, Op: ">=", Limit: 3999.99999, Met: true, Against: "0.95 × the healthy scenario's 4211/s"}},
		Notes:   []string{"healthy endpoints got 95% of the healthy rate"},
		Roles:   []RoleUsage{{Role: "dispatcher", CPUSeconds: 200.123, CPUCoresAvg: 3.3333, PeakRSSBytes: 150 << 20}},
		Passed:  false, Failures: []string{"12 pairs missing"},
		Series: reportTestSeries(3),
	}
}

func reportTestKeys(t *testing.T, what string, v any) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s is %T, not an object", what, v)
	}
	return m
}

func reportTestSameKeys(t *testing.T, what string, m map[string]any, want []string) {
	t.Helper()
	var got []string
	for k := range m {
		got = append(got, k)
	}
	sort.Strings(got)
	want = slices.Clone(want)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s keys:\n got %v\nwant %v", what, got, want)
	}
}

// The JSON names scripts rely on, exactly.
var reportRequiredKeys = []string{
	"name", "events", "deliveries", "deliveries_per_sec", "ceiling_per_sec", "ratio",
	"p50_ms", "p95_ms", "p99_ms", "max_ms", "missing", "duplicates", "bad_signatures", "peak_rss_bytes",
}

func TestReportJSONKeys(t *testing.T) {
	r := &Report{
		Started: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), Host: CurrentHost(), Short: true, Command: "make bench",
		Scenarios: []Scenario{reportTestFull(), {Name: "healthy", Passed: true}},
	}
	dir := filepath.Join(t.TempDir(), "a", "b") // WriteFiles creates it
	jsonPath, htmlPath, err := r.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if jsonPath != filepath.Join(dir, "report.json") || htmlPath != filepath.Join(dir, "report.html") {
		t.Fatalf("paths %q %q", jsonPath, htmlPath)
	}
	if _, err := os.Stat(htmlPath); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("{\n  \"started\": ")) {
		t.Errorf("report.json is not indented: %.60s", raw)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	top := reportTestKeys(t, "report", doc)
	reportTestSameKeys(t, "report", top, []string{"started", "host", "short", "command", "scenarios"})
	hostKeys := []string{"cpus", "os", "arch", "go_version"}
	if r.Host.Hostname != "" {
		hostKeys = append(hostKeys, "hostname")
	}
	if r.Host.Kernel != "" {
		hostKeys = append(hostKeys, "kernel")
	}
	reportTestSameKeys(t, "host", reportTestKeys(t, "host", top["host"]), hostKeys)
	scs, ok := top["scenarios"].([]any)
	if !ok || len(scs) != 2 {
		t.Fatalf("scenarios: %v", top["scenarios"])
	}

	full := reportTestKeys(t, "scenario", scs[0])
	for _, k := range reportRequiredKeys {
		if _, ok := full[k]; !ok {
			t.Errorf("scenario lacks required key %q", k)
		}
	}
	reportTestSameKeys(t, "full scenario", full, append(slices.Clone(reportRequiredKeys),
		"variant", "duration_sec", "offered_per_sec", "latency_note", "healthy_per_sec", "deleted", "queued",
		"id_mismatches", "unexpected", "peak_retry_depth", "webhooks", "partitions", "dispatchers",
		"bytes_per_webhook", "notes", "roles", "passed", "failures", "series",
		"redis_bytes_per_queued", "peak_queue_depth", "drain_per_sec", "drain_ratio", "cpu_us_per_delivery",
		"drain_backlog_sec", "drain_cores", "drain_delivered_per_sec", "drain_wall_sec", "drain_depth", "drain_claims_per_retry", "drain_attempts_per_retry",
		"drain_us_per_delivery", "flood_us_per_delivery",
		"healthy_offered_per_sec", "healthy_warm_per_sec", "healthy_p99_ms", "healthy_warm_p99_ms", "flood_per_sec",
		"ceiling_cpu_us_per_request", "cpu_ratio", "own_p50_ms", "own_p99_ms", "paced_us_per_delivery", "paced_cores", "targets"))
	targets := full["targets"].([]any)
	reportTestSameKeys(t, "target", reportTestKeys(t, "target", targets[0]), []string{"figure", "value", "op", "limit", "met"})
	reportTestSameKeys(t, "target", reportTestKeys(t, "target", targets[1]), []string{"figure", "value", "op", "limit", "met", "against"})
	roles := full["roles"].([]any)
	reportTestSameKeys(t, "role", reportTestKeys(t, "role", roles[0]), []string{"role", "cpu_seconds", "cpu_cores_avg", "peak_rss_bytes"})
	series := full["series"].([]any)
	if len(series) != 3 {
		t.Fatalf("series has %d points, want 3", len(series))
	}
	reportTestSameKeys(t, "point", reportTestKeys(t, "point", series[0]),
		[]string{"t", "delivered_per_sec", "p50_ms", "p99_ms", "retry_depth", "rss_bytes", "cpu_cores"})
	reportTestSameKeys(t, "point", reportTestKeys(t, "point", series[1]),
		[]string{"t", "delivered_per_sec", "p50_ms", "p99_ms", "retry_depth", "due_backlog", "rss_bytes", "cpu_cores", "cpu_waiting"})

	// A bare scenario keeps every required key, writes roles and series as
	// [] (not null) and leaves out the omitempty extras.
	bare := reportTestKeys(t, "scenario", scs[1])
	reportTestSameKeys(t, "bare scenario", bare, append(slices.Clone(reportRequiredKeys),
		"duration_sec", "offered_per_sec", "id_mismatches", "unexpected", "roles", "passed", "series"))
	for _, k := range []string{"roles", "series"} {
		if a, ok := bare[k].([]any); !ok || len(a) != 0 {
			t.Errorf("bare %s = %#v, want []", k, bare[k])
		}
	}

	// Round trip: the values come back, rounded.
	var back Report
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	s := back.Scenarios[0]
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"deliveries_per_sec", s.DeliveriesPerSec, 48211.4},
		{"ceiling_per_sec", s.CeilingPerSec, 52000},
		{"ratio", s.Ratio, 0.927},
		{"p50_ms", s.P50Ms, 1.23},
		{"p99_ms", s.P99Ms, 12.35},
		{"duration_sec", s.DurationSec, 60.12},
		{"healthy_per_sec", s.HealthyPerSec, 4123.5},
		{"bytes_per_webhook", s.BytesPerWebhook, 1234.6},
		{"redis_bytes_per_queued", s.RedisBytesPerQueued, 860},
		{"drain_per_sec", s.DrainPerSec, 12345.7},
		{"drain_ratio", s.DrainRatio, 0.512},
		{"drain_backlog_sec", s.DrainBacklogSec, 12.35},
		{"drain_cores", s.DrainCores, 0.46},
		{"drain_delivered_per_sec", s.DrainDeliveredPerSec, 15432.2},
		{"drain_wall_sec", s.DrainWallSec, 43.57},
		{"drain_claims_per_retry", s.DrainClaimsPerRetry, 2.46},
		{"drain_us_per_delivery", s.DrainUsPerDelivery, 31},
		{"flood_us_per_delivery", s.FloodUsPerDelivery, 25},
		{"drain_attempts_per_retry", s.DrainAttemptsPerRetry, 1.23},
		{"healthy_offered_per_sec", s.HealthyOfferedPerSec, 4200},
		{"healthy_warm_per_sec", s.HealthyWarmPerSec, 4200},
		{"healthy_p99_ms", s.HealthyP99Ms, 8.77},
		{"healthy_warm_p99_ms", s.HealthyWarmP99Ms, 4.32},
		{"flood_per_sec", s.FloodPerSec, 24000},
		{"cpu_us_per_delivery", s.CPUUsPerDelivery, 22.46},
		{"ceiling_cpu_us_per_request", s.CeilingCPUUsPerRequest, 9},
		{"cpu_ratio", s.CPURatio, 2.494},
		{"own_p50_ms", s.OwnP50Ms, 0.88},
		{"own_p99_ms", s.OwnP99Ms, 7.65},
		{"paced_us_per_delivery", s.PacedUsPerDelivery, 25},
		{"paced_cores.harness", s.PacedCores.Harness, 0.52},
		{"targets[1].limit", s.Targets[1].Limit, 4000},
		{"roles[0].cpu_cores_avg", s.Roles[0].CPUCoresAvg, 3.33},
		{"series[1].t", s.Series[1].T, 2},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if s.PeakQueueDepth != 20000 || len(s.Targets) != 2 || s.Targets[0].Met || !s.Targets[1].Met || s.Targets[0].Figure != "redis_bytes_per_queued" {
		t.Errorf("round trip lost the queue depth or the targets: %+v", s.Targets)
	}
	if s.Name != "partitions" || s.Variant != "8 partitions, 2 dispatchers" || s.Missing != 12 || s.PeakRSSBytes != 212<<20 ||
		!slices.Equal(s.Failures, []string{"12 pairs missing"}) || s.Passed || !back.Scenarios[1].Passed || !back.Short ||
		back.Command != "make bench" || !back.Started.Equal(r.Started) || back.Host != r.Host {
		t.Errorf("round trip lost something: %+v", back)
	}
	if bytes.Contains(raw, []byte("00000000")) {
		t.Error("report.json has an unrounded float")
	}
}

func TestReportRatioWithoutCeilingIsZero(t *testing.T) {
	b, err := json.Marshal(Scenario{Name: "churn", DeliveriesPerSec: 100, Ratio: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"ratio":0,`)) {
		t.Errorf("ratio without a ceiling written as %s", b)
	}
}

func TestReportNoScenariosIsEmptyList(t *testing.T) {
	b, err := json.Marshal(&Report{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"scenarios":[]`)) {
		t.Errorf("no scenarios written as %s", b)
	}
}

func TestReportNonFinite(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	s := Scenario{
		Name: "healthy", DeliveriesPerSec: nan, CeilingPerSec: inf,
		P50Ms: nan, P95Ms: inf, P99Ms: nan, MaxMs: inf, DurationSec: nan, OfferedPerSec: inf,
		HealthyPerSec: nan, BytesPerWebhook: inf, Ratio: math.Inf(-1),
		RedisBytesPerQueued: nan, DrainPerSec: inf, DrainRatio: nan, CPUUsPerDelivery: inf, CeilingCPUUsPerRequest: nan,
		CPURatio: inf, OwnP50Ms: nan, OwnP99Ms: inf, Targets: []Target{CheckTarget("cpu_ratio", inf, "<=", 1.5)},
		Roles:  []RoleUsage{{Role: "all", CPUSeconds: nan, CPUCoresAvg: inf}},
		Series: []Point{{T: nan, DeliveredPerSec: inf, P50Ms: nan, P99Ms: inf, CPUCores: nan}, {T: 2, DeliveredPerSec: 5, P99Ms: nan}},
	}
	s.Ratio = nan
	r := &Report{Scenarios: []Scenario{s}}
	_, htmlPath, err := r.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatalf("NaN/Inf broke writing: %v", err)
	}
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	b := back.Scenarios[0]
	for name, v := range map[string]float64{
		"deliveries_per_sec": b.DeliveriesPerSec, "ceiling_per_sec": b.CeilingPerSec, "ratio": b.Ratio,
		"p50_ms": b.P50Ms, "max_ms": b.MaxMs, "cpu_cores_avg": b.Roles[0].CPUCoresAvg, "t": b.Series[0].T,
		"redis_bytes_per_queued": b.RedisBytesPerQueued, "drain_per_sec": b.DrainPerSec, "cpu_ratio": b.CPURatio,
		"own_p99_ms": b.OwnP99Ms, "targets[0].value": b.Targets[0].Value,
	} {
		if v != 0 {
			t.Errorf("%s = %v, want 0 for NaN/Inf", name, v)
		}
	}
	page, err := os.ReadFile(htmlPath)
	if err != nil {
		t.Fatal(err)
	}
	var tbl bytes.Buffer
	if err := r.WriteTable(&tbl); err != nil {
		t.Fatal(err)
	}
	for what, out := range map[string]string{"json": string(js), "html": string(page), "table": tbl.String()} {
		if strings.Contains(out, "NaN") || strings.Contains(out, "Inf") {
			t.Errorf("%s shows NaN or Inf", what)
		}
	}
}

func TestReportRound(t *testing.T) {
	for _, c := range []struct{ v, scale, want float64 }{
		{0.1 + 0.2, 10, 0.3}, {1.005, 100, 1}, {1.23456, 100, 1.23}, {-0.0001, 100, 0}, {math.NaN(), 10, 0},
		{math.Inf(-1), 10, 0}, {1e307, 1000, 1e307},
	} {
		got := reportRound(c.v, c.scale)
		if got != c.want || math.Signbit(got) != math.Signbit(c.want) {
			t.Errorf("reportRound(%v, %v) = %v, want %v", c.v, c.scale, got, c.want)
		}
	}
	b, _ := json.Marshal(Point{T: -0.0001, DeliveredPerSec: 0.1 + 0.2})
	if strings.Contains(string(b), "-0") || !strings.Contains(string(b), `"delivered_per_sec":0.3`) {
		t.Errorf("point written as %s", b)
	}
}

var (
	reportPathData = regexp.MustCompile(` d="([^"]*)"`)
	reportNumAttr  = regexp.MustCompile(` (x|y|x1|x2|y1|y2|cx|cy|dx|dy|width|height)="([^"]*)"`)
	reportPathOK   = regexp.MustCompile(`^M-?[0-9.]+ -?[0-9.]+( L-?[0-9.]+ -?[0-9.]+)*$`)
)

func reportTestPage(t *testing.T, r *Report) string {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// reportTestSection is the part of the page about scenario i.
func reportTestSection(t *testing.T, page string, i int) string {
	t.Helper()
	start := strings.Index(page, `<section id="s`+strconv.Itoa(i)+`">`)
	if start < 0 {
		t.Fatalf("no section %d", i)
	}
	end := strings.Index(page[start:], "</section>")
	if end < 0 {
		t.Fatalf("section %d not closed", i)
	}
	return page[start : start+end]
}

func reportTestCheckSVG(t *testing.T, page string) {
	t.Helper()
	for _, m := range reportPathData.FindAllStringSubmatch(page, -1) {
		if !reportPathOK.MatchString(m[1]) {
			t.Errorf("path data is not only numbers: %.80q", m[1])
		}
	}
	for _, m := range reportNumAttr.FindAllStringSubmatch(page, -1) {
		if _, err := strconv.ParseFloat(m[2], 64); err != nil {
			t.Errorf("attribute %s=%q is not a number", m[1], m[2])
		}
	}
}

func TestReportHTML(t *testing.T) {
	full := reportTestFull()
	full.Series = reportTestSeries(120)
	full.LatencyNote = `<script>alert("x")</script>`
	full.Failures = []string{"<b>12</b> pairs missing"}
	r := &Report{
		Started: time.Now(), Host: CurrentHost(), Command: `make bench ARGS="<i>"`,
		Scenarios: []Scenario{
			full,
			{Name: "dead-endpoints", Passed: true}, // no series
			{Name: "recovering", Passed: true, Series: []Point{{T: 1, P50Ms: 3, P99Ms: 9}}},        // one point
			{Name: "churn", Passed: true, Series: []Point{{T: 1}, {T: 2}, {T: 3}, {T: 4}, {T: 5}}}, // all zero
		},
	}
	page := reportTestPage(t, r)

	if n := strings.Count(page, "<svg"); n != 5*len(r.Scenarios) {
		t.Errorf("%d <svg elements, want 5 per scenario (%d)", n, 5*len(r.Scenarios))
	}
	if strings.Count(page, "<svg") != strings.Count(page, "</svg>") {
		t.Error("unclosed <svg")
	}
	for i := range r.Scenarios {
		sec := reportTestSection(t, page, i)
		if n := strings.Count(sec, "<svg"); n != 5 {
			t.Errorf("scenario %d has %d charts, want 5", i, n)
		}
		for _, title := range []string{"Delivered per second", "Latency of first answers", "Retry-queue depth", "geckohook memory (RSS)", "geckohook CPU"} {
			if !strings.Contains(sec, ">"+title+" (") {
				t.Errorf("scenario %d lacks chart %q", i, title)
			}
		}
	}

	// The overdue backlog is drawn beside the depth where there was one.
	if !strings.Contains(reportTestSection(t, page, 0), "due ≥ 1 s, not taken") || strings.Contains(reportTestSection(t, page, 3), "not taken") {
		t.Error("the overdue backlog's line is missing, or drawn where there was none")
	}

	// Self-contained: nothing fetched, no script at all.
	low := strings.ToLower(page)
	for _, bad := range []string{"http://", "https://", "<script", "<link", "<img", "<iframe", " src=", "url(", "@import", "xlink:href"} {
		if strings.Contains(low, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	for _, want := range []string{
		"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", // the latency note
		"&lt;b&gt;12&lt;/b&gt; pairs missing",             // a failure
		"make bench ARGS=&#34;&lt;i&gt;&#34;",             // the command
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks escaped %q", want)
		}
	}
	if strings.Contains(page, "<b>12") || strings.Contains(page, "<i>") {
		t.Error("page has unescaped markup from the report")
	}
	reportTestCheckSVG(t, page)
	if strings.Contains(page, "NaN") || strings.Contains(page, "Inf") {
		t.Error("page shows NaN or Inf")
	}

	// The full series is drawn as a line of all its points.
	sec0 := reportTestSection(t, page, 0)
	if m := reportPathData.FindStringSubmatch(sec0); m == nil || strings.Count(m[1], " L") != 119 {
		t.Errorf("delivered/s line of 120 points drawn as %d segments", strings.Count(m[1], " L"))
	}
	if !strings.Contains(sec0, ">p50</text>") || !strings.Contains(sec0, ">p99</text>") {
		t.Error("latency chart has no legend")
	}
	if !strings.Contains(sec0, ">dispatcher</td>") {
		t.Error("roles table missing")
	}
	for _, want := range []string{"860.0 bytes per queued delivery", "µs per delivery", "target redis_bytes_per_queued &lt;= 250: 860.04 MISSED"} {
		if !strings.Contains(sec0, want) {
			t.Errorf("scenario section lacks %q", want)
		}
	}
	// Empty series: every chart says so and draws no line.
	sec1 := reportTestSection(t, page, 1)
	if n := strings.Count(sec1, ">no data</text>"); n != 5 {
		t.Errorf("empty scenario: %d charts say no data, want 5", n)
	}
	if strings.Contains(sec1, "<path") || strings.Contains(sec1, "<circle") {
		t.Error("empty scenario draws a line")
	}
	// One point: drawn as a dot on each line (two on the latency chart).
	sec2 := reportTestSection(t, page, 2)
	if n := strings.Count(sec2, "<circle"); n != 6 {
		t.Errorf("single-point scenario has %d dots, want 6", n)
	}
	if strings.Contains(sec2, "no data") {
		t.Error("single-point scenario says no data")
	}
	// All zero: lines along the bottom axis, with a scale.
	sec3 := reportTestSection(t, page, 3)
	if n := strings.Count(sec3, "<path"); n != 6 {
		t.Errorf("all-zero scenario has %d lines, want 6", n)
	}
}

func TestReportChartEdges(t *testing.T) {
	xy := func(ys ...float64) []reportXY {
		out := make([]reportXY, len(ys))
		for i, y := range ys {
			out[i] = reportXY{float64(i), y}
		}
		return out
	}
	cases := map[string][]reportXY{
		"nil":           nil,
		"single":        {{5, 7}},
		"single zero":   {{0, 0}},
		"all zero":      xy(0, 0, 0, 0),
		"all equal":     xy(3, 3, 3),
		"negative":      xy(-5, 2, -1),
		"huge":          xy(1e300, -1e300, math.MaxFloat64),
		"tiny":          xy(1e-300, 2e-300),
		"not finite":    {{math.NaN(), 1}, {1, math.Inf(1)}, {2, math.NaN()}, {3, 4}},
		"unsorted":      {{3, 1}, {1, 2}, {2, 3}},
		"same instant":  {{2, 1}, {2, 5}},
		"long":          xy(make([]float64, 5000)...),
		"large seconds": {{0, 1}, {86400, 2}},
	}
	num := regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`)
	for name, pts := range cases {
		c := reportMakeChart("t", "u", false, []reportSeries{{Label: "a", XY: pts}, {Label: "b", XY: pts}})
		if c.Empty != (len(pts) == 0) {
			t.Errorf("%s: Empty = %v", name, c.Empty)
		}
		if len(c.XTicks) < 2 || len(c.YTicks) < 2 {
			t.Errorf("%s: %d x ticks, %d y ticks", name, len(c.XTicks), len(c.YTicks))
		}
		coords := []string{c.X0, c.X1, c.Y0, c.Y1, c.MidX, c.MidY, c.TickEnd}
		for _, tk := range append(c.XTicks, c.YTicks...) {
			coords = append(coords, tk.Pos)
			if tk.Label == "" || strings.Contains(tk.Label, "NaN") || strings.Contains(tk.Label, "Inf") || utf8.RuneCountInString(tk.Label) > 12 {
				t.Errorf("%s: tick label %q", name, tk.Label)
			}
		}
		for _, tk := range c.YTicks {
			y, _ := strconv.ParseFloat(tk.Pos, 64)
			if y < reportChartTop-0.05 || y > reportChartH-reportChartBottom+0.05 {
				t.Errorf("%s: y tick %q at %v, outside the plot", name, tk.Label, y)
			}
		}
		for _, l := range c.Lines {
			if l.Path != "" && !reportPathOK.MatchString(l.Path) {
				t.Errorf("%s: path %.60q", name, l.Path)
			}
			if n := strings.Count(l.Path, "M") + strings.Count(l.Path, "L"); n > reportMaxPoints {
				t.Errorf("%s: line of %d points", name, n)
			}
			for _, d := range l.Dots {
				coords = append(coords, d.X, d.Y)
			}
		}
		for _, s := range coords {
			if !num.MatchString(s) {
				t.Errorf("%s: coordinate %q", name, s)
			}
		}
	}
	// Counts get whole ticks only.
	c := reportMakeChart("t", "u", true, []reportSeries{{XY: xy(0, 0)}})
	for _, tk := range c.YTicks {
		if strings.Contains(tk.Label, ".") {
			t.Errorf("count axis has tick %q", tk.Label)
		}
	}
	// Thousands are shortened on the value axis.
	c = reportMakeChart("t", "u", false, []reportSeries{{XY: xy(0, 40000)}})
	if !slices.ContainsFunc(c.YTicks, func(tk reportTick) bool { return tk.Label == "40k" }) {
		t.Errorf("ticks %v lack 40k", c.YTicks)
	}
}

func TestReportDownsampleKeepsPeaks(t *testing.T) {
	ps := reportTestSeries(20000)
	ps[12345].DeliveredPerSec = 1e6 // one spike
	ps[777].DeliveredPerSec = 0     // one trough
	charts := reportCharts(&Scenario{Series: ps})
	l := charts[0].Lines[0]
	n := strings.Count(l.Path, "M") + strings.Count(l.Path, "L")
	if n > reportMaxPoints || n < reportMaxPoints/2 {
		t.Errorf("20000 points drawn as %d", n)
	}
	if !strings.Contains(l.Path, " "+charts[0].Y1+" ") && !strings.HasSuffix(l.Path, " "+charts[0].Y1) {
		// The spike is the top of the scale: 1e6 is a whole tick.
		t.Errorf("spike lost: top %s not in the line", charts[0].Y1)
	}
	if !strings.Contains(l.Path, " "+charts[0].Y0+" ") {
		t.Errorf("trough lost: bottom %s not in the line", charts[0].Y0)
	}

	r := &Report{}
	for range 6 {
		r.Scenarios = append(r.Scenarios, Scenario{Name: "healthy", Series: ps})
	}
	page := reportTestPage(t, r)
	if len(page) > 600_000 {
		t.Errorf("page of 6 long scenarios is %d bytes", len(page))
	}
}

func TestReportTable(t *testing.T) {
	fail := reportTestFull() // partitions, variant, FAIL, "12 pairs missing"
	r := &Report{
		Started: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), Host: Host{CPUs: 8, OS: "linux", Arch: "amd64", GoVersion: "go1.26.8", Hostname: "bench-1"},
		Command: "make bench",
		Scenarios: []Scenario{
			{Name: "healthy", Passed: true, DeliveriesPerSec: 48211.37, CeilingPerSec: 52000, Ratio: 0.927, P50Ms: 1.234, P95Ms: 4.5, P99Ms: 12.3, MaxMs: 254.2,
				PeakRSSBytes: 300 << 20, Roles: []RoleUsage{{Role: "dispatcher", CPUCoresAvg: 3}, {Role: "api", CPUCoresAvg: 0.25}}},
			fail,
			{Name: "dead-endpoints", Passed: true, HealthyPerSec: 4123.4},
			{Name: "churn"}, // failed without a reason
		},
	}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(out, "\n")
	row := func(name string) string {
		for _, l := range lines {
			if f := strings.Fields(l); len(f) > 0 && f[0] == name {
				return l
			}
		}
		t.Fatalf("no row for %s in\n%s", name, out)
		return ""
	}
	if f := strings.Fields(row("healthy")); !slices.Equal(f, []string{"healthy", "PASS", "48211", "52000", "0.93", "1.23", "4.50", "12.3", "254", "0", "0", "0", "0", "300", "3.25"}) {
		t.Errorf("healthy row: %q", f)
	}
	if f := strings.Fields(row("partitions")); len(f) < 13 || f[1] != "FAIL" || f[9] != "12" || f[12] != "7" {
		t.Errorf("partitions row: %q", f)
	}
	if f := strings.Fields(row("churn")); len(f) < 2 || f[1] != "FAIL" {
		t.Errorf("churn row: %q", f)
	}
	for _, want := range []string{
		"started 2026-03-01 12:00:00 UTC on bench-1 (8 CPUs, linux/amd64, go1.26.8)",
		"command: make bench",
		"  (8 partitions, 2 dispatchers)\n",
		"  partitions (8 partitions, 2 dispatchers): 12 pairs missing\n",
		"  churn: failed (no reason given)\n",
		"  partitions (8 partitions, 2 dispatchers): latency: paced at 50% of the sustained rate\n",
		"  dead-endpoints: healthy endpoints alone: 4123 deliveries/s\n",
		"1234.6 bytes per webhook (100000 webhooks)",
		"CPU: geckohook 22.5 µs per delivery, the ceiling client 9.0 µs per request (2.49×)",
		"geckohook's own latency (Kafka record time to arrival at the receiver): p50 0.88 ms, p99 7.65 ms",
		"Redis: 860.0 bytes per queued delivery at a depth of 20000",
		"drain once the hosts were back: 12346 deliveries/s (0.51 of the healthy flood rate) out of 61234 retries made due at once; the queues were empty 43.6 s after the hosts' return, geckohook using 0.46 cores",
		"target redis_bytes_per_queued <= 250: 860.04 MISSED",
		"target healthy_per_sec >= 4000: 4123.45 met (against 0.95 × the healthy scenario's 4211/s)",
		"FAIL: 2 of 4 scenarios failed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// The variant line follows its row.
	if i := strings.Index(out, row("partitions")); !strings.HasPrefix(out[i+len(row("partitions")):], "\n  (8 partitions") {
		t.Error("variant not under its row")
	}
	// Header and rows are aligned (right-aligned cells end in one column)
	// and fit a 120-column terminal.
	header := row("scenario")
	table := []string{header, lines[slices.Index(lines, header)+1]}
	if h, v := strings.Index(header, "p50")+3, strings.Index(row("healthy"), " 1.23 ")+5; h != v {
		t.Errorf("p50 heading ends at column %d, its figure at %d", h, v)
	}
	if h, v := strings.Index(header, "missing")+7, strings.Index(row("partitions"), " 12 ")+3; h != v {
		t.Errorf("missing heading ends at column %d, its figure at %d", h, v)
	}
	for _, name := range []string{"healthy", "partitions", "dead-endpoints", "churn"} {
		table = append(table, row(name))
	}
	for _, l := range table {
		if n := utf8.RuneCountInString(l); n != utf8.RuneCountInString(table[0]) || n > 120 {
			t.Errorf("table line of %d columns (header %d): %q", n, utf8.RuneCountInString(table[0]), l)
		}
	}

	b.Reset()
	if err := (&Report{Scenarios: []Scenario{{Name: "healthy", Passed: true}}}).WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "PASS: all 1 scenarios passed") || strings.Contains(b.String(), "FAIL") {
		t.Errorf("passing table:\n%s", b.String())
	}
	b.Reset()
	if err := (&Report{}).WriteTable(&b); err != nil || !strings.Contains(b.String(), "no scenarios") {
		t.Errorf("empty table (%v):\n%s", err, b.String())
	}
}

func TestReportFailed(t *testing.T) {
	r := &Report{}
	if r.Failed() {
		t.Error("a report without scenarios failed")
	}
	r.Scenarios = []Scenario{{Name: "healthy", Passed: true}, {Name: "churn", Passed: true}}
	if r.Failed() {
		t.Error("all passed, yet Failed")
	}
	r.Scenarios[1].Passed = false
	if !r.Failed() {
		t.Error("one failed, yet not Failed")
	}
}

func TestRatioOf(t *testing.T) {
	for _, c := range []struct{ rate, ceiling, want float64 }{
		{50, 100, 0.5}, {50, 0, 0}, {50, -1, 0}, {math.NaN(), 100, 0}, {50, math.Inf(1), 0},
	} {
		if got := RatioOf(c.rate, c.ceiling); got != c.want {
			t.Errorf("RatioOf(%v, %v) = %v, want %v", c.rate, c.ceiling, got, c.want)
		}
	}
}

func TestCurrentHost(t *testing.T) {
	h := CurrentHost()
	if h.CPUs < 1 || h.OS != runtime.GOOS || h.Arch != runtime.GOARCH || h.GoVersion != runtime.Version() {
		t.Errorf("host %+v", h)
	}
	if _, err := os.Stat("/proc/sys/kernel/osrelease"); err == nil && h.Kernel == "" {
		t.Error("kernel not read from /proc/sys/kernel/osrelease")
	}
}

// A note every row of a scenario shares is printed once, naming the
// scenario; a note of some rows names each.
func TestReportTableGroupsSharedNotes(t *testing.T) {
	r := &Report{Scenarios: []Scenario{
		{Name: "partitions", Variant: "1 partition", Passed: true, LatencyNote: "saturated"},
		{Name: "partitions", Variant: "2 partitions", Passed: true, LatencyNote: "saturated"},
		{Name: "healthy", Passed: true, LatencyNote: "paced"},
		{Name: "churn", Passed: true, LatencyNote: "saturated"},
	}}
	var b strings.Builder
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.Count(out, "saturated") != 1 || !strings.Contains(out, "partitions (1 partition), partitions (2 partitions), churn: latency: saturated") {
		t.Fatalf("shared note not grouped by row:\n%s", out)
	}
	r.Scenarios = r.Scenarios[:3]
	b.Reset()
	_ = r.WriteTable(&b)
	if out := b.String(); !strings.Contains(out, "partitions (all 2): latency: saturated") {
		t.Fatalf("a note of every partitions row not collapsed:\n%s", out)
	}
}
