package loadtest

// This file is the capacity report of `make bench`: the types one run of the
// capacity suite fills in, report.json for scripts, report.html for people
// (one self-contained file, charts drawn here as inline SVG) and the table
// printed at the end of the run.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"
)

// Report is one run of the capacity suite.
type Report struct {
	Started   time.Time  `json:"started"`
	Host      Host       `json:"host"`
	Short     bool       `json:"short"`   // a BENCH_SHORT run
	Command   string     `json:"command"` // how it was run, e.g. "make bench"
	Scenarios []Scenario `json:"scenarios"`
	// Soak is the soak's own summary (`make soak`), nil for the suite.
	Soak *SoakSummary `json:"soak,omitempty"`
}

// Host is the machine a report was made on.
type Host struct {
	CPUs      int    `json:"cpus"`
	OS        string `json:"os"`   // runtime.GOOS
	Arch      string `json:"arch"` // runtime.GOARCH
	GoVersion string `json:"go_version"`
	Hostname  string `json:"hostname,omitempty"`
	Kernel    string `json:"kernel,omitempty"` // /proc/sys/kernel/osrelease where there is one
}

// CurrentHost describes the machine this process runs on. The hostname and
// kernel are left empty when they cannot be read.
func CurrentHost() Host {
	h := Host{CPUs: runtime.NumCPU(), OS: runtime.GOOS, Arch: runtime.GOARCH, GoVersion: runtime.Version()}
	h.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	return h
}

// Scenario is the outcome of one scenario (or one variant of it) of a run.
//
// Every float is written to JSON rounded (rates to 0.1, milliseconds to
// 0.01, the ratio to 0.001) and NaN or ±Inf as 0, so encoding a report never
// fails; the ratio is written as 0 when there is no ceiling; Roles and
// Series are written as [] when empty, never null.
type Scenario struct {
	Name    string `json:"name"`              // healthy, dead-endpoints, recovering, churn, registry-scale, registry-million, partitions
	Variant string `json:"variant,omitempty"` // e.g. "8 partitions, 2 dispatchers"

	Events           int64   `json:"events"`
	Deliveries       int64   `json:"deliveries"` // (event, webhook) pairs answered 2xx
	DeliveriesPerSec float64 `json:"deliveries_per_sec"`
	CeilingPerSec    float64 `json:"ceiling_per_sec"` // 0: no ceiling for this scenario
	Ratio            float64 `json:"ratio"`           // DeliveriesPerSec / CeilingPerSec, 0 when no ceiling (see RatioOf)

	// Latency of first answers, in milliseconds; LatencyNote says what exactly.
	P50Ms float64 `json:"p50_ms"`
	P95Ms float64 `json:"p95_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`

	Missing       int64 `json:"missing"`        // expected pairs never answered 2xx
	Duplicates    int64 `json:"duplicates"`     // pairs answered 2xx more than once
	BadSignatures int64 `json:"bad_signatures"` // requests whose signature did not verify
	PeakRSSBytes  int64 `json:"peak_rss_bytes"` // geckohook processes, summed at each sample, peak

	DurationSec   float64 `json:"duration_sec"`
	OfferedPerSec float64 `json:"offered_per_sec"`        // events offered per second; 0: as fast as possible
	LatencyNote   string  `json:"latency_note,omitempty"` // what the latency figures measure, e.g. "paced at 50% of the sustained rate"
	HealthyPerSec float64 `json:"healthy_per_sec,omitempty"`
	// The outage's healthy pairs (those whose hosts stay up): offered
	// per second while the other hosts were down (HealthyPerSec is what
	// they got then), delivered per second in the warm phase before, and
	// their produce-to-2xx p99 in each; FloodPerSec is the lead-in's
	// deliveries/s, as fast as possible with every host up.
	HealthyOfferedPerSec float64 `json:"healthy_offered_per_sec,omitempty"`
	HealthyWarmPerSec    float64 `json:"healthy_warm_per_sec,omitempty"`
	HealthyP99Ms         float64 `json:"healthy_p99_ms,omitempty"`
	HealthyWarmP99Ms     float64 `json:"healthy_warm_p99_ms,omitempty"`
	FloodPerSec          float64 `json:"flood_per_sec,omitempty"`
	Deleted              int64   `json:"deleted,omitempty"` // webhooks deleted (410s)
	Queued               int64   `json:"queued,omitempty"`  // pairs still waiting for a retry at the end
	IDMismatches         int64   `json:"id_mismatches"`     // delivery ids that differ between attempts of one pair
	Unexpected           int64   `json:"unexpected"`        // requests for pairs that were never expected
	PeakRetryDepth       int64   `json:"peak_retry_depth,omitempty"`

	Webhooks        int     `json:"webhooks,omitempty"`
	Partitions      int     `json:"partitions,omitempty"`
	Dispatchers     int     `json:"dispatchers,omitempty"`
	BytesPerWebhook float64 `json:"bytes_per_webhook,omitempty"`

	// The registry-million scenario's figures (registrymillion.go).
	RegistryLoadMs          float64 `json:"registry_load_ms,omitempty"`           // slowest process's load at start
	RegistryBytesPerWebhook float64 `json:"registry_bytes_per_webhook,omitempty"` // live heap after GC, net of an empty registry
	ChangeP99Ms             float64 `json:"change_p99_ms,omitempty"`              // API change to every process holding it

	// Cost figures (figures.go says how each is taken; 0: not measured).
	// RedisBytesPerQueued is Redis memory per queued delivery at the peak
	// queue depth, PeakQueueDepth that depth.
	RedisBytesPerQueued float64 `json:"redis_bytes_per_queued,omitempty"`
	PeakQueueDepth      int64   `json:"peak_queue_depth,omitempty"`
	// DrainPerSec: deliveries/s out of the retry queues once the failing
	// hosts are back and every queued delivery was made due (DrainDepth
	// of them), over the seconds that began with deliveries overdue and
	// not claimed (DrainBacklogSec of them); DrainRatio: DrainPerSec over
	// FloodPerSec; DrainCores: geckohook's CPU cores over those seconds,
	// DrainDeliveredPerSec the pairs it delivered per second in them;
	// DrainClaimsPerRetry and DrainAttemptsPerRetry: retry claims and
	// requests from then until the queues were empty, per delivery made
	// due. DrainWallSec: from the hosts' return until a sample saw the
	// queues empty.
	DrainPerSec          float64 `json:"drain_per_sec,omitempty"`
	DrainRatio           float64 `json:"drain_ratio,omitempty"`
	DrainDepth           int64   `json:"drain_depth,omitempty"`
	DrainBacklogSec      float64 `json:"drain_backlog_sec,omitempty"`
	DrainCores           float64 `json:"drain_cores,omitempty"`
	DrainDeliveredPerSec float64 `json:"drain_delivered_per_sec,omitempty"`
	DrainWallSec         float64 `json:"drain_wall_sec,omitempty"`
	// DrainUsPerDelivery and FloodUsPerDelivery: geckohook's CPU
	// microseconds per pair delivered over the drain's overdue seconds
	// and over the lead-in: what a delivery from the retry queues costs
	// against one from Kafka, steadier than the rates on shared cores.
	DrainUsPerDelivery float64 `json:"drain_us_per_delivery,omitempty"`
	FloodUsPerDelivery float64 `json:"flood_us_per_delivery,omitempty"`
	// DrainRedisUsPerDelivery: redis-server's CPU microseconds per pair
	// delivered over the drain's overdue seconds (the claim and outcome
	// scripts' work), when the harness started redis-server.
	DrainRedisUsPerDelivery float64 `json:"drain_redis_us_per_delivery,omitempty"`
	DrainClaimsPerRetry     float64 `json:"drain_claims_per_retry,omitempty"`
	DrainAttemptsPerRetry   float64 `json:"drain_attempts_per_retry,omitempty"`
	// CPUUsPerDelivery: geckohook's CPU microseconds per delivery;
	// CeilingCPUUsPerRequest: the ceiling client's per request; CPURatio:
	// the first over the second.
	CPUUsPerDelivery       float64 `json:"cpu_us_per_delivery,omitempty"`
	CeilingCPUUsPerRequest float64 `json:"ceiling_cpu_us_per_request,omitempty"`
	CPURatio               float64 `json:"cpu_ratio,omitempty"`
	// OwnP50Ms, OwnP99Ms: geckohook's own share of the latency rows'
	// P50Ms and P99Ms (Kafka record time to the request's arrival at the
	// receiver).
	OwnP50Ms float64 `json:"own_p50_ms,omitempty"`
	OwnP99Ms float64 `json:"own_p99_ms,omitempty"`
	// PacedUsPerDelivery is geckohook's CPU microseconds per pair over
	// the paced phase (CPUUsPerDelivery is the flood's), and PacedCores
	// the cores each process used then: at half the flood's rate the
	// cores are not half as busy, as each event then costs more, and
	// what they leave free sets the latency's tail.
	PacedUsPerDelivery float64     `json:"paced_us_per_delivery,omitempty"`
	PacedCores         *PhaseCores `json:"paced_cores,omitempty"`
	// Targets are the figures checked against a target; a miss is
	// reported here and in the notes, and does not fail the scenario.
	Targets []Target `json:"targets,omitempty"`

	// Notes are what the harness observed besides the figures.
	Notes []string `json:"notes,omitempty"`

	// Roles is CPU and memory per process role: "broker" (Kafka), "redis",
	// and the geckohook ones ("geckohook", or all, api, dispatcher,
	// coordinator); the sum of the geckohook roles' CPUCoresAvg is the
	// "geckohook CPU" of the table.
	Roles []RoleUsage `json:"roles"`

	Passed   bool     `json:"passed"`
	Failures []string `json:"failures,omitempty"` // e.g. "12 pairs missing"

	Series []Point `json:"series"` // one point a second
}

// Target is one figure of a scenario checked against its target.
type Target struct {
	Figure string  `json:"figure"` // a key of the scenario, e.g. "redis_bytes_per_queued"
	Value  float64 `json:"value"`
	Op     string  `json:"op"` // "<=" or ">="
	Limit  float64 `json:"limit"`
	Met    bool    `json:"met"`
	// Against names what a relative figure was compared with.
	Against string `json:"against,omitempty"`
}

// CheckTarget compares value with limit: at most (op "<=") or at least
// (">="); a value that is not finite misses.
func CheckTarget(figure string, value float64, op string, limit float64) Target {
	t := Target{Figure: figure, Value: value, Op: op, Limit: limit}
	if reportFinite(value) {
		t.Met = (op == "<=" && value <= limit) || (op == ">=" && value >= limit)
	}
	return t
}

// RoleUsage is what the geckohook processes of one role used in a scenario.
type RoleUsage struct {
	Role         string  `json:"role"`
	CPUSeconds   float64 `json:"cpu_seconds"`
	CPUCoresAvg  float64 `json:"cpu_cores_avg"` // CPUSeconds / wall seconds of the scenario
	PeakRSSBytes int64   `json:"peak_rss_bytes"`
}

// Point is one second of a scenario.
type Point struct {
	T               float64 `json:"t"` // seconds since the scenario started
	DeliveredPerSec float64 `json:"delivered_per_sec"`
	P50Ms           float64 `json:"p50_ms"` // of the first answers in that second; 0 if none
	P99Ms           float64 `json:"p99_ms"`
	RetryDepth      int64   `json:"retry_depth"`
	DueBacklog      int64   `json:"due_backlog,omitempty"` // of RetryDepth, due a second or more before and not yet taken (outage)
	RSSBytes        int64   `json:"rss_bytes"`             // geckohook processes
	CPUCores        float64 `json:"cpu_cores"`             // geckohook processes, cores busy during that second
	CPUWaiting      float64 `json:"cpu_waiting,omitempty"` // geckohook's threads waiting, runnable, for a CPU during that second, on average
}

// RatioOf is rate / ceiling, or 0 when there is no ceiling (ceiling <= 0)
// or either is not finite.
func RatioOf(rate, ceiling float64) float64 {
	if ceiling <= 0 || !reportFinite(rate) || !reportFinite(ceiling) {
		return 0
	}
	return rate / ceiling
}

// Failed reports whether any scenario did not pass.
func (r *Report) Failed() bool {
	for i := range r.Scenarios {
		if !r.Scenarios[i].Passed {
			return true
		}
	}
	return false
}

// --- JSON ---

// MarshalJSON writes scenarios as [] rather than null when there are none.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report
	if r.Scenarios == nil {
		r.Scenarios = []Scenario{}
	}
	return json.Marshal(plain(r))
}

// MarshalJSON rounds the floats, writes NaN and ±Inf as 0, the ratio as 0
// when there is no ceiling, and empty Roles and Series as [].
func (s Scenario) MarshalJSON() ([]byte, error) {
	type plain Scenario
	s.DeliveriesPerSec = reportRound(s.DeliveriesPerSec, 10)
	s.CeilingPerSec = reportRound(s.CeilingPerSec, 10)
	s.Ratio = reportRound(s.Ratio, 1000)
	if !(s.CeilingPerSec > 0) || !reportFinite(s.CeilingPerSec) {
		s.Ratio = 0 // no ceiling, no ratio
	}
	s.P50Ms = reportRound(s.P50Ms, 100)
	s.P95Ms = reportRound(s.P95Ms, 100)
	s.P99Ms = reportRound(s.P99Ms, 100)
	s.MaxMs = reportRound(s.MaxMs, 100)
	s.DurationSec = reportRound(s.DurationSec, 100)
	s.OfferedPerSec = reportRound(s.OfferedPerSec, 10)
	s.HealthyPerSec = reportRound(s.HealthyPerSec, 10)
	s.HealthyOfferedPerSec = reportRound(s.HealthyOfferedPerSec, 10)
	s.HealthyWarmPerSec = reportRound(s.HealthyWarmPerSec, 10)
	s.HealthyP99Ms = reportRound(s.HealthyP99Ms, 100)
	s.HealthyWarmP99Ms = reportRound(s.HealthyWarmP99Ms, 100)
	s.FloodPerSec = reportRound(s.FloodPerSec, 10)
	s.BytesPerWebhook = reportRound(s.BytesPerWebhook, 10)
	s.RegistryLoadMs = reportRound(s.RegistryLoadMs, 100)
	s.RegistryBytesPerWebhook = reportRound(s.RegistryBytesPerWebhook, 10)
	s.ChangeP99Ms = reportRound(s.ChangeP99Ms, 100)
	s.RedisBytesPerQueued = reportRound(s.RedisBytesPerQueued, 10)
	s.DrainPerSec = reportRound(s.DrainPerSec, 10)
	s.DrainRatio = reportRound(s.DrainRatio, 1000)
	s.DrainBacklogSec = reportRound(s.DrainBacklogSec, 100)
	s.DrainCores = reportRound(s.DrainCores, 100)
	s.DrainDeliveredPerSec = reportRound(s.DrainDeliveredPerSec, 10)
	s.DrainWallSec = reportRound(s.DrainWallSec, 100)
	s.DrainClaimsPerRetry = reportRound(s.DrainClaimsPerRetry, 100)
	s.DrainUsPerDelivery = reportRound(s.DrainUsPerDelivery, 10)
	s.DrainRedisUsPerDelivery = reportRound(s.DrainRedisUsPerDelivery, 10)
	s.FloodUsPerDelivery = reportRound(s.FloodUsPerDelivery, 10)
	s.DrainAttemptsPerRetry = reportRound(s.DrainAttemptsPerRetry, 100)
	s.CPUUsPerDelivery = reportRound(s.CPUUsPerDelivery, 100)
	s.CeilingCPUUsPerRequest = reportRound(s.CeilingCPUUsPerRequest, 100)
	s.CPURatio = reportRound(s.CPURatio, 1000)
	s.OwnP50Ms = reportRound(s.OwnP50Ms, 100)
	s.OwnP99Ms = reportRound(s.OwnP99Ms, 100)
	s.PacedUsPerDelivery = reportRound(s.PacedUsPerDelivery, 10)
	if c := s.PacedCores; c != nil {
		s.PacedCores = &PhaseCores{Geckohook: reportRound(c.Geckohook, 100), Broker: reportRound(c.Broker, 100),
			Harness: reportRound(c.Harness, 100), Waiting: reportRound(c.Waiting, 100)}
	}
	if s.Targets != nil {
		ts := make([]Target, len(s.Targets))
		for i, t := range s.Targets {
			t.Value, t.Limit = reportRound(t.Value, 1000), reportRound(t.Limit, 1000)
			ts[i] = t
		}
		s.Targets = ts
	}
	if s.Roles == nil {
		s.Roles = []RoleUsage{}
	}
	if s.Series == nil {
		s.Series = []Point{}
	}
	return json.Marshal(plain(s))
}

// MarshalJSON rounds the floats and writes NaN and ±Inf as 0.
func (u RoleUsage) MarshalJSON() ([]byte, error) {
	type plain RoleUsage
	u.CPUSeconds = reportRound(u.CPUSeconds, 100)
	u.CPUCoresAvg = reportRound(u.CPUCoresAvg, 100)
	return json.Marshal(plain(u))
}

// MarshalJSON rounds the floats and writes NaN and ±Inf as 0.
func (p Point) MarshalJSON() ([]byte, error) {
	type plain Point
	p.T = reportRound(p.T, 1000)
	p.DeliveredPerSec = reportRound(p.DeliveredPerSec, 10)
	p.P50Ms = reportRound(p.P50Ms, 100)
	p.P99Ms = reportRound(p.P99Ms, 100)
	p.CPUCores = reportRound(p.CPUCores, 100)
	p.CPUWaiting = reportRound(p.CPUWaiting, 100)
	return json.Marshal(plain(p))
}

func reportFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// reportRound rounds v to 1/scale (scale a power of ten, so the result
// prints short: 0.3, not 0.30000000000000004); NaN and ±Inf become 0, and
// so does -0.
func reportRound(v, scale float64) float64 {
	if !reportFinite(v) {
		return 0
	}
	r := math.Round(v*scale) / scale
	if !reportFinite(r) { // v*scale overflowed: v is too large for rounding to matter
		return v
	}
	if r == 0 {
		return 0
	}
	return r
}

// --- files ---

// WriteFiles creates dir if needed and writes report.json (indented) and
// report.html into it.
func (r *Report) WriteFiles(dir string) (jsonPath, htmlPath string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("cannot create report directory: %w", err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", "", fmt.Errorf("cannot encode report: %w", err)
	}
	var page bytes.Buffer
	if err := r.WriteHTML(&page); err != nil {
		return "", "", err
	}
	jsonPath = filepath.Join(dir, "report.json")
	htmlPath = filepath.Join(dir, "report.html")
	if err := os.WriteFile(jsonPath, append(js, '\n'), 0o644); err != nil {
		return "", "", fmt.Errorf("cannot write report: %w", err)
	}
	if err := os.WriteFile(htmlPath, page.Bytes(), 0o644); err != nil {
		return "", "", fmt.Errorf("cannot write report: %w", err)
	}
	return jsonPath, htmlPath, nil
}

// --- the summary row, shared by the table and the page ---

type reportRow struct {
	Name, Variant, Result                     string
	Passed                                    bool
	Events, Deliveries                        string
	Rate, Ceiling, Ratio                      string
	P50, P95, P99, Max                        string
	Missing, Duplicates, BadSignatures, Retry string
	RSS, CPU                                  string
}

func reportRowOf(s *Scenario) reportRow {
	row := reportRow{
		Name: s.Name, Variant: s.Variant, Result: "FAIL", Passed: s.Passed,
		Events: strconv.FormatInt(s.Events, 10), Deliveries: strconv.FormatInt(s.Deliveries, 10),
		Rate: reportFmtRate(s.DeliveriesPerSec), Ceiling: "-", Ratio: "-",
		P50: reportFmtMs(s.P50Ms), P95: reportFmtMs(s.P95Ms), P99: reportFmtMs(s.P99Ms), Max: reportFmtMs(s.MaxMs),
		Missing: strconv.FormatInt(s.Missing, 10), Duplicates: strconv.FormatInt(s.Duplicates, 10),
		BadSignatures: strconv.FormatInt(s.BadSignatures, 10),
		Retry:         strconv.FormatInt(s.PeakRetryDepth, 10),
		RSS:           reportFmtMiB(s.PeakRSSBytes),
		CPU:           strconv.FormatFloat(reportRound(reportCores(s), 100), 'f', 2, 64),
	}
	if s.Passed {
		row.Result = "PASS"
	}
	if reportFinite(s.CeilingPerSec) && s.CeilingPerSec > 0 {
		row.Ceiling = reportFmtRate(s.CeilingPerSec)
		row.Ratio = strconv.FormatFloat(reportRound(s.Ratio, 100), 'f', 2, 64)
	}
	return row
}

// reportCores is the CPU the geckohook processes used on average, in cores:
// the sum over Roles, or the mean of the series when there are no roles.
func reportCores(s *Scenario) float64 {
	sum := 0.0
	if len(s.Roles) > 0 {
		for _, u := range s.Roles {
			if u.Role == "broker" || u.Role == "redis" {
				continue // not geckohook
			}
			if reportFinite(u.CPUCoresAvg) {
				sum += u.CPUCoresAvg
			}
		}
		return sum
	}
	n := 0
	for _, p := range s.Series {
		if reportFinite(p.CPUCores) {
			sum += p.CPUCores
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

func reportFmtRate(v float64) string {
	v = reportRound(v, 10)
	if math.Abs(v) >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func reportFmtMs(v float64) string {
	v = reportRound(v, 100)
	switch a := math.Abs(v); {
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func reportFmtMiB(b int64) string {
	m := float64(b) / (1 << 20)
	if math.Abs(m) >= 10 {
		return strconv.FormatFloat(m, 'f', 0, 64)
	}
	return strconv.FormatFloat(m, 'f', 1, 64)
}

// reportCostNotes says the cost figures that were measured, and each
// target checked.
func reportCostNotes(s *Scenario) []string {
	var notes []string
	f1 := func(v float64) string { return strconv.FormatFloat(reportRound(v, 10), 'f', 1, 64) }
	f2 := func(v float64) string { return strconv.FormatFloat(reportRound(v, 100), 'f', 2, 64) }
	if reportRound(s.CPUUsPerDelivery, 100) != 0 {
		n := "CPU: geckohook " + f1(s.CPUUsPerDelivery) + " µs per delivery"
		if reportRound(s.CeilingCPUUsPerRequest, 100) != 0 {
			n += ", the ceiling client " + f1(s.CeilingCPUUsPerRequest) + " µs per request (" + f2(s.CPURatio) + "×)"
		}
		notes = append(notes, n)
	}
	// Said where it tells something the row's latency does not: a paced
	// phase, or receivers that took time to answer.
	if reportRound(s.OwnP99Ms, 100) != 0 && (s.OfferedPerSec > 0 || reportFmtMs(s.OwnP99Ms) != reportFmtMs(s.P99Ms)) {
		notes = append(notes, "geckohook's own latency (Kafka record time to arrival at the receiver): p50 "+
			reportFmtMs(s.OwnP50Ms)+" ms, p99 "+reportFmtMs(s.OwnP99Ms)+" ms")
	}
	if c := s.PacedCores; c != nil && reportRound(s.PacedUsPerDelivery, 10) != 0 {
		n := "CPU over the paced phase: geckohook " + f2(c.Geckohook) + " cores (" + f1(s.PacedUsPerDelivery) + " µs per delivery"
		if reportRound(s.CPUUsPerDelivery, 100) != 0 {
			n += ", " + f1(s.CPUUsPerDelivery) + " in the flood"
		}
		n += ")"
		if c.Broker != 0 {
			n += ", the broker " + f2(c.Broker)
		}
		n += ", the harness's generator and receivers " + f2(c.Harness) + "; geckohook's threads waited " +
			f2(c.Waiting) + " s a second for a CPU"
		notes = append(notes, n)
	}
	if reportRound(s.RedisBytesPerQueued, 10) != 0 {
		notes = append(notes, "Redis: "+f1(s.RedisBytesPerQueued)+" bytes per queued delivery at a depth of "+
			strconv.FormatInt(s.PeakQueueDepth, 10))
	}
	if reportRound(s.DrainPerSec, 10) != 0 {
		n := "drain once the hosts were back: " + reportFmtRate(s.DrainPerSec) + " deliveries/s (" +
			f2(s.DrainRatio) + " of the healthy flood rate)"
		if s.DrainDepth != 0 {
			n += " out of " + strconv.FormatInt(s.DrainDepth, 10) + " retries made due at once"
		}
		if reportRound(s.DrainWallSec, 100) != 0 {
			n += "; the queues were empty " + f1(s.DrainWallSec) + " s after the hosts' return"
		}
		if reportRound(s.DrainCores, 100) != 0 {
			n += ", geckohook using " + f2(s.DrainCores) + " cores"
		}
		notes = append(notes, n)
	}
	for _, t := range s.Targets {
		res := "met"
		if !t.Met {
			res = "MISSED"
		}
		n := "target " + t.Figure + " " + t.Op + " " + strconv.FormatFloat(reportRound(t.Limit, 1000), 'f', -1, 64) +
			": " + strconv.FormatFloat(reportRound(t.Value, 1000), 'f', -1, 64) + " " + res
		if t.Against != "" {
			n += " (against " + t.Against + ")"
		}
		notes = append(notes, n)
	}
	return notes
}

// reportNotes is what the table and the page say under a scenario besides
// its failures.
func reportNotes(s *Scenario) []string {
	notes := append([]string(nil), s.Notes...)
	if s.LatencyNote != "" {
		notes = append(notes, "latency: "+s.LatencyNote)
	}
	if reportRound(s.HealthyPerSec, 10) != 0 && s.HealthyOfferedPerSec == 0 { // the outage says its own
		notes = append(notes, "healthy endpoints alone: "+reportFmtRate(s.HealthyPerSec)+" deliveries/s")
	}
	notes = append(notes, reportCostNotes(s)...)
	if reportRound(s.BytesPerWebhook, 10) != 0 {
		n := strconv.FormatFloat(reportRound(s.BytesPerWebhook, 10), 'f', 1, 64) + " bytes per webhook"
		if s.Webhooks > 0 {
			n += " (" + strconv.Itoa(s.Webhooks) + " webhooks)"
		}
		notes = append(notes, n)
	}
	if n := registryNote(s); n != "" {
		notes = append(notes, n)
	}
	return notes
}

func reportHostLine(r *Report) string {
	var b strings.Builder
	b.WriteString("started ")
	if r.Started.IsZero() {
		b.WriteString("(unknown)")
	} else {
		b.WriteString(r.Started.Format("2006-01-02 15:04:05 MST"))
	}
	h := r.Host
	if h.Hostname != "" {
		b.WriteString(" on " + h.Hostname)
	}
	fmt.Fprintf(&b, " (%d CPUs, %s/%s, %s", h.CPUs, h.OS, h.Arch, h.GoVersion)
	if h.Kernel != "" {
		b.WriteString(", kernel " + h.Kernel)
	}
	b.WriteString(")")
	if r.Short {
		b.WriteString(", short run")
	}
	return b.String()
}

// --- the table ---

// reportOneLine keeps a table cell on one line: tabs and line breaks become spaces.
func reportOneLine(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '\t', '\n', '\r', '\v', '\f':
			return ' '
		}
		return r
	}, s)
}

// WriteTable writes the table printed at the end of `make bench`: one row
// per scenario, then the failures and notes.
func (r *Report) WriteTable(w io.Writer) error {
	var out bytes.Buffer
	out.WriteString("geckohook capacity report: " + reportOneLine(reportHostLine(r)) + "\n")
	if r.Command != "" {
		out.WriteString("command: " + reportOneLine(r.Command) + "\n")
	}
	out.WriteString("\n")
	if len(r.Scenarios) == 0 {
		out.WriteString("no scenarios\n")
		_, err := w.Write(out.Bytes())
		return err
	}

	// Numbers are right-aligned; the name and result cells are padded to
	// one width so they read left-aligned. Variants go on a line of their
	// own under their row, added after tabwriter has aligned the rows, so a
	// long variant does not widen the table.
	rows := make([]reportRow, len(r.Scenarios))
	nameW := utf8.RuneCountInString("scenario")
	for i := range r.Scenarios {
		rows[i] = reportRowOf(&r.Scenarios[i])
		rows[i].Name = reportOneLine(rows[i].Name)
		nameW = max(nameW, utf8.RuneCountInString(rows[i].Name))
	}
	pad := func(s string, w int) string { return s + strings.Repeat(" ", w-utf8.RuneCountInString(s)) }
	var tbl bytes.Buffer
	tw := tabwriter.NewWriter(&tbl, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := [][]string{
		{pad("scenario", nameW), "result", "deliveries", "ceiling", "ratio", "p50", "p95", "p99", "max", "missing", "dups", "bad", "retry", "RSS", "CPU"},
		{pad("", nameW), "      ", "/s", "/s", "", "ms", "ms", "ms", "ms", "", "", "sig", "peak", "MiB", "cores"},
	}
	for _, h := range header {
		fmt.Fprint(tw, strings.Join(h, "\t")+"\t\n")
	}
	for _, row := range rows {
		cells := []string{pad(row.Name, nameW), pad(row.Result, 6), row.Rate, row.Ceiling, row.Ratio,
			row.P50, row.P95, row.P99, row.Max, row.Missing, row.Duplicates, row.BadSignatures, row.Retry, row.RSS, row.CPU}
		fmt.Fprint(tw, strings.Join(cells, "\t")+"\t\n")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSuffix(tbl.String(), "\n"), "\n")
	for i, line := range lines {
		out.WriteString(strings.TrimRight(line, " ") + "\n")
		if j := i - len(header); j >= 0 && rows[j].Variant != "" {
			out.WriteString("  (" + reportOneLine(rows[j].Variant) + ")\n")
		}
	}

	label := func(s *Scenario) string {
		if s.Variant == "" {
			return reportOneLine(s.Name)
		}
		return reportOneLine(s.Name) + " (" + reportOneLine(s.Variant) + ")"
	}
	indent := func(s string) string { return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n      ") }
	failed := 0
	for i := range r.Scenarios {
		s := &r.Scenarios[i]
		if s.Passed {
			continue
		}
		failed++
		if failed == 1 {
			out.WriteString("\nfailures:\n")
		}
		if len(s.Failures) == 0 {
			out.WriteString("  " + label(s) + ": failed (no reason given)\n")
		}
		for _, f := range s.Failures {
			out.WriteString("  " + label(s) + ": " + indent(f) + "\n")
		}
	}
	// A note several rows share is printed once, naming them all.
	var notes []string
	noteRows := map[string][]string{}
	noteNames := map[string][]string{}
	perName := map[string]int{}
	for i := range r.Scenarios {
		perName[r.Scenarios[i].Name]++
	}
	for i := range r.Scenarios {
		s := &r.Scenarios[i]
		for _, n := range reportNotes(s) {
			if _, seen := noteRows[n]; !seen {
				notes = append(notes, n)
			}
			if l := label(s); !slices.Contains(noteRows[n], l) {
				noteRows[n] = append(noteRows[n], l)
			}
			noteNames[n] = append(noteNames[n], s.Name)
		}
	}
	if len(notes) > 0 {
		out.WriteString("\nnotes:\n")
	}
	for _, n := range notes {
		who := strings.Join(noteRows[n], ", ")
		// Every row of one scenario: name it once.
		if names := noteNames[n]; len(names) > 1 && names[0] == names[len(names)-1] && perName[names[0]] == len(names) {
			who = fmt.Sprintf("%s (all %d)", names[0], len(names))
		}
		out.WriteString("  " + who + ": " + indent(n) + "\n")
	}
	if failed == 0 {
		fmt.Fprintf(&out, "\nPASS: all %d scenarios passed\n", len(r.Scenarios))
	} else {
		fmt.Fprintf(&out, "\nFAIL: %d of %d scenarios failed\n", failed, len(r.Scenarios))
	}
	_, err := w.Write(out.Bytes())
	return err
}

// --- charts ---

const (
	reportChartW      = 600
	reportChartH      = 240
	reportChartLeft   = 60
	reportChartRight  = 16
	reportChartTop    = 30
	reportChartBottom = 42
	reportMaxPoints   = 600   // a line with more points is downsampled to at most this many
	reportClip        = 1e15  // values beyond ±reportClip are clipped, so no scale arithmetic overflows
	reportTinySpan    = 1e-12 // a span below this is treated as no span
)

type reportXY struct{ X, Y float64 }

type reportTick struct{ Pos, Label string }

type reportDot struct{ X, Y string }

type reportLine struct {
	Label string // legend; empty for a chart of one line
	Class string // l0, l1: colour
	Path  string // SVG path data: only M, L, digits, '.', '-' and spaces
	Dots  []reportDot
	LX    string // legend position
}

type reportChart struct {
	Title, XUnit, YUnit string
	W, H                int
	X0, X1, Y0, Y1      string // the plot area (Y0 is the bottom)
	TickEnd             string // where x tick marks end, below Y0
	XTicks, YTicks      []reportTick
	Lines               []reportLine
	Empty               bool
	MidX, MidY          string
}

type reportSeries struct {
	Label string
	XY    []reportXY
}

// reportNum formats a coordinate to 0.1 of a unit, with no exponent.
func reportNum(v float64) string { return strconv.FormatFloat(reportRound(v, 10), 'f', -1, 64) }

// reportNiceStep is 1, 2 or 5 times a power of ten, near span/n.
func reportNiceStep(span float64, n int) float64 {
	raw := span / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*mag*(1+1e-9) {
			return m * mag
		}
	}
	return 10 * mag
}

// reportTickLabel writes tick value v of a scale with this step; with
// short, thousands become k, millions M and billions G.
func reportTickLabel(v, step float64, short bool) string {
	div, suffix := 1.0, ""
	switch {
	case !short:
	case step >= 1e9:
		div, suffix = 1e9, "G"
	case step >= 1e6:
		div, suffix = 1e6, "M"
	case step >= 1e3:
		div, suffix = 1e3, "k"
	}
	dec := int(-math.Floor(math.Log10(step/div) + 1e-6))
	dec = min(max(dec, 0), 9)
	v /= div
	if math.Abs(v) < step/div/1e6 {
		v = 0 // no "-0"
	}
	s := strconv.FormatFloat(v, 'f', dec, 64)
	if v == 0 {
		return "0"
	}
	return s + suffix
}

// reportTicks spreads about n nice ticks, at least minStep apart, over
// [lo, hi] (lo < hi, both finite).
func reportTicks(lo, hi float64, n int, minStep float64) (step float64, ticks []float64) {
	step = max(reportNiceStep(hi-lo, n), minStep)
	for i := math.Ceil(lo/step - 1e-9); len(ticks) < 4*n; i++ {
		v := i * step
		if v > hi+step*1e-9 {
			break
		}
		ticks = append(ticks, v)
	}
	return step, ticks
}

// reportDownsample keeps a line of more than reportMaxPoints points within
// that many: per bucket of consecutive points, its lowest and its highest,
// in order, so peaks survive.
func reportDownsample(xy []reportXY) []reportXY {
	if len(xy) <= reportMaxPoints {
		return xy
	}
	buckets := reportMaxPoints / 2
	size := (len(xy) + buckets - 1) / buckets
	out := make([]reportXY, 0, reportMaxPoints)
	for start := 0; start < len(xy); start += size {
		b := xy[start:min(start+size, len(xy))]
		lo, hi := 0, 0
		for i, p := range b {
			if p.Y < b[lo].Y {
				lo = i
			}
			if p.Y > b[hi].Y {
				hi = i
			}
		}
		switch {
		case lo == hi:
			out = append(out, b[lo])
		case lo < hi:
			out = append(out, b[lo], b[hi])
		default:
			out = append(out, b[hi], b[lo])
		}
	}
	return out
}

// reportMakeChart lays out a line chart of the given series against time.
// Points that are not finite are left out; an empty chart says so; a line
// of one point is drawn as a dot; a chart whose values are all equal (all
// zero, say) gets a scale of one unit above them. Counts (whole) get no
// ticks between whole numbers.
func reportMakeChart(title, yUnit string, whole bool, series []reportSeries) reportChart {
	c := reportChart{
		Title: title, XUnit: "seconds since start", YUnit: yUnit, W: reportChartW, H: reportChartH,
	}
	px0, px1 := float64(reportChartLeft), float64(reportChartW-reportChartRight)
	py0, py1 := float64(reportChartH-reportChartBottom), float64(reportChartTop) // py0 is the bottom
	c.X0, c.X1, c.Y0, c.Y1 = reportNum(px0), reportNum(px1), reportNum(py0), reportNum(py1)
	c.MidX, c.MidY = reportNum((px0+px1)/2), reportNum((py0+py1)/2)
	c.TickEnd = reportNum(py0 + 4)

	clip := func(v float64) float64 { return math.Max(-reportClip, math.Min(reportClip, v)) }
	lines := make([][]reportXY, len(series))
	xlo, xhi, ylo, yhi := 0.0, math.Inf(-1), 0.0, math.Inf(-1)
	for i, s := range series {
		for _, p := range s.XY {
			if !reportFinite(p.X) || !reportFinite(p.Y) {
				continue
			}
			p = reportXY{clip(p.X), clip(p.Y)}
			lines[i] = append(lines[i], p)
			xlo, xhi = math.Min(xlo, p.X), math.Max(xhi, p.X)
			ylo, yhi = math.Min(ylo, p.Y), math.Max(yhi, p.Y)
		}
		sort.SliceStable(lines[i], func(a, b int) bool { return lines[i][a].X < lines[i][b].X })
		lines[i] = reportDownsample(lines[i])
	}
	if math.IsInf(xhi, -1) { // no points at all
		c.Empty = true
		xhi, yhi = 1, 1
	}
	if xhi-xlo < reportTinySpan {
		xhi = xlo + 1
	}
	if yhi-ylo < reportTinySpan {
		yhi = ylo + 1
	}
	minYStep := 0.0
	if whole {
		minYStep = 1
	}
	ystep, _ := reportTicks(ylo, yhi, 4, minYStep)
	ylo = math.Floor(ylo/ystep+1e-9) * ystep
	yhi = math.Ceil(yhi/ystep-1e-9) * ystep

	sx := func(x float64) float64 { return px0 + (x-xlo)/(xhi-xlo)*(px1-px0) }
	sy := func(y float64) float64 { return py0 - (y-ylo)/(yhi-ylo)*(py0-py1) }

	xstep, xt := reportTicks(xlo, xhi, 6, 0)
	for _, v := range xt {
		c.XTicks = append(c.XTicks, reportTick{Pos: reportNum(sx(v)), Label: reportTickLabel(v, xstep, false)})
	}
	ystep, yt := reportTicks(ylo, yhi, 4, minYStep)
	for _, v := range yt {
		c.YTicks = append(c.YTicks, reportTick{Pos: reportNum(sy(v)), Label: reportTickLabel(v, ystep, true)})
	}

	legendX := px1
	for i := len(series) - 1; i >= 0; i-- {
		l := reportLine{Class: "l" + strconv.Itoa(i%2)}
		if len(series) > 1 {
			l.Label = series[i].Label
			legendX -= float64(14 + 7*utf8.RuneCountInString(l.Label) + 12)
			l.LX = reportNum(legendX)
		}
		var path strings.Builder
		for j, p := range lines[i] {
			if j == 0 {
				path.WriteString("M")
			} else {
				path.WriteString(" L")
			}
			path.WriteString(reportNum(sx(p.X)) + " " + reportNum(sy(p.Y)))
		}
		l.Path = path.String()
		if len(lines[i]) == 1 {
			p := lines[i][0]
			l.Dots = []reportDot{{X: reportNum(sx(p.X)), Y: reportNum(sy(p.Y))}}
		}
		c.Lines = append(c.Lines, l)
	}
	// Lines were built last to first for the legend; draw them first to last.
	for i, j := 0, len(c.Lines)-1; i < j; i, j = i+1, j-1 {
		c.Lines[i], c.Lines[j] = c.Lines[j], c.Lines[i]
	}
	return c
}

// reportCharts are the charts of one scenario: delivered/s, latency,
// retry-queue depth, RSS and CPU of the geckohook processes.
func reportCharts(s *Scenario) []reportChart {
	n := len(s.Series)
	rate := make([]reportXY, n)
	p50 := make([]reportXY, n)
	p99 := make([]reportXY, n)
	depth := make([]reportXY, n)
	backlog := make([]reportXY, n)
	var anyBacklog bool
	rss := make([]reportXY, n)
	cpu := make([]reportXY, n)
	for i, p := range s.Series {
		rate[i] = reportXY{p.T, p.DeliveredPerSec}
		p50[i] = reportXY{p.T, p.P50Ms}
		p99[i] = reportXY{p.T, p.P99Ms}
		depth[i] = reportXY{p.T, float64(p.RetryDepth)}
		backlog[i] = reportXY{p.T, float64(p.DueBacklog)}
		anyBacklog = anyBacklog || p.DueBacklog != 0
		rss[i] = reportXY{p.T, float64(p.RSSBytes) / (1 << 20)}
		cpu[i] = reportXY{p.T, p.CPUCores}
	}
	depths := []reportSeries{{XY: depth}}
	if anyBacklog {
		depths = []reportSeries{{Label: "queued", XY: depth}, {Label: "due ≥ 1 s, not taken", XY: backlog}}
	}
	return []reportChart{
		reportMakeChart("Delivered per second", "deliveries/s", false, []reportSeries{{XY: rate}}),
		reportMakeChart("Latency of first answers", "ms", false, []reportSeries{{Label: "p50", XY: p50}, {Label: "p99", XY: p99}}),
		reportMakeChart("Retry-queue depth", "deliveries", true, depths),
		reportMakeChart("geckohook memory (RSS)", "MiB", false, []reportSeries{{XY: rss}}),
		reportMakeChart("geckohook CPU", "cores", false, []reportSeries{{XY: cpu}}),
	}
}

// --- the page ---

type reportFigure struct{ Label, Value string }

type reportSection struct {
	ID       string
	Row      reportRow
	Failures []string
	Notes    []string
	Figures  []reportFigure
	Roles    []reportRoleRow
	Charts   []reportChart
}

type reportRoleRow struct{ Role, CPUSeconds, Cores, RSS string }

type reportPage struct {
	HostLine string
	Command  string
	Failed   bool
	Passed   int
	Total    int
	Rows     []reportRow
	Sections []reportSection
}

func reportFigures(s *Scenario) []reportFigure {
	f := []reportFigure{
		{"events", strconv.FormatInt(s.Events, 10)},
		{"deliveries (2xx)", strconv.FormatInt(s.Deliveries, 10)},
		{"duration", strconv.FormatFloat(reportRound(s.DurationSec, 10), 'f', 1, 64) + " s"},
	}
	if s.OfferedPerSec > 0 {
		f = append(f, reportFigure{"offered", reportFmtRate(s.OfferedPerSec) + " events/s"})
	} else {
		f = append(f, reportFigure{"offered", "as fast as possible"})
	}
	ints := []struct {
		label  string
		v      int64
		always bool
	}{
		{"delivery-id mismatches", s.IDMismatches, true},
		{"unexpected requests", s.Unexpected, true},
		{"webhooks deleted", s.Deleted, false},
		{"still queued at the end", s.Queued, false},
		{"peak retry-queue depth", s.PeakRetryDepth, false},
		{"webhooks", int64(s.Webhooks), false},
		{"partitions", int64(s.Partitions), false},
		{"dispatchers", int64(s.Dispatchers), false},
	}
	for _, x := range ints {
		if x.always || x.v != 0 {
			f = append(f, reportFigure{x.label, strconv.FormatInt(x.v, 10)})
		}
	}
	return f
}

// WriteHTML writes report.html: one self-contained page (no scripts, no
// external resources) with the summary table and, per scenario, its
// figures and charts.
func (r *Report) WriteHTML(w io.Writer) error {
	p := reportPage{HostLine: reportHostLine(r), Command: r.Command, Failed: r.Failed(), Total: len(r.Scenarios)}
	for i := range r.Scenarios {
		s := &r.Scenarios[i]
		row := reportRowOf(s)
		if s.Passed {
			p.Passed++
		}
		p.Rows = append(p.Rows, row)
		sec := reportSection{
			ID: "s" + strconv.Itoa(i), Row: row, Failures: s.Failures, Notes: reportNotes(s),
			Figures: reportFigures(s), Charts: reportCharts(s),
		}
		for _, u := range s.Roles {
			sec.Roles = append(sec.Roles, reportRoleRow{
				Role:       u.Role,
				CPUSeconds: strconv.FormatFloat(reportRound(u.CPUSeconds, 10), 'f', 1, 64),
				Cores:      strconv.FormatFloat(reportRound(u.CPUCoresAvg, 100), 'f', 2, 64),
				RSS:        reportFmtMiB(u.PeakRSSBytes),
			})
		}
		p.Sections = append(p.Sections, sec)
	}
	var b bytes.Buffer
	if err := reportTemplate.Execute(&b, p); err != nil {
		return fmt.Errorf("cannot render report page: %w", err)
	}
	_, err := w.Write(b.Bytes())
	return err
}

var reportTemplate = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>geckohook capacity report</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.meta { color: #555; margin: 0.2em 0; }
code { background: #f3f3f3; padding: 0 0.3em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #e3e3e3; }
th { text-align: left; font-weight: 600; background: #f6f6f6; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #17702a; font-weight: 600; }
.fail { color: #b3141c; font-weight: 600; }
.banner { padding: 0.4em 0.8em; display: inline-block; margin: 0.6em 0; }
.banner.pass { background: #e6f4e9; }
.banner.fail { background: #fbe7e8; }
dl { display: grid; grid-template-columns: max-content max-content; gap: 0.1em 1em; }
dt { color: #555; }
dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 0.8em; }
svg { background: #fff; border: 1px solid #e3e3e3; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
svg .title { font-size: 13px; font-weight: 600; fill: #222; }
svg .axis { stroke: #888; stroke-width: 1; }
svg .grid { stroke: #eee; stroke-width: 1; }
svg .line { fill: none; stroke-width: 1.5; stroke-linejoin: round; }
svg .l0 { stroke: #1f6fb4; fill: #1f6fb4; }
svg .l1 { stroke: #d2452b; fill: #d2452b; }
svg path.l0, svg path.l1 { fill: none; }
</style>
</head>
<body>
<h1>geckohook capacity report</h1>
<p class="meta">{{.HostLine}}</p>
{{if .Command}}<p class="meta">command: <code>{{.Command}}</code></p>{{end}}
{{if .Failed}}<p class="banner fail">FAIL: {{.Passed}} of {{.Total}} scenarios passed</p>{{else}}<p class="banner pass">PASS: all {{.Total}} scenarios passed</p>{{end}}
<table>
<tr><th>scenario</th><th>variant</th><th>result</th><th>events</th><th>deliveries</th><th>deliveries/s</th><th>ceiling/s</th><th>ratio</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th><th>missing</th><th>dups</th><th>bad sig</th><th>retry queue peak</th><th>peak RSS MiB</th><th>CPU cores</th></tr>
{{range $i, $r := .Rows}}<tr><td><a href="#s{{$i}}">{{$r.Name}}</a></td><td>{{$r.Variant}}</td><td class="{{if $r.Passed}}pass{{else}}fail{{end}}">{{$r.Result}}</td><td class="n">{{$r.Events}}</td><td class="n">{{$r.Deliveries}}</td><td class="n">{{$r.Rate}}</td><td class="n">{{$r.Ceiling}}</td><td class="n">{{$r.Ratio}}</td><td class="n">{{$r.P50}}</td><td class="n">{{$r.P95}}</td><td class="n">{{$r.P99}}</td><td class="n">{{$r.Max}}</td><td class="n">{{$r.Missing}}</td><td class="n">{{$r.Duplicates}}</td><td class="n">{{$r.BadSignatures}}</td><td class="n">{{$r.Retry}}</td><td class="n">{{$r.RSS}}</td><td class="n">{{$r.CPU}}</td></tr>
{{end}}</table>
{{range .Sections}}
<section id="{{.ID}}">
<h2>{{.Row.Name}}{{if .Row.Variant}} ({{.Row.Variant}}){{end}} <span class="{{if .Row.Passed}}pass{{else}}fail{{end}}">{{.Row.Result}}</span></h2>
{{if .Failures}}<ul class="fail">{{range .Failures}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{if .Notes}}<ul>{{range .Notes}}<li>{{.}}</li>{{end}}</ul>{{end}}
<dl>{{range .Figures}}<dt>{{.Label}}</dt><dd>{{.Value}}</dd>{{end}}</dl>
{{if .Roles}}<table><tr><th>role</th><th>CPU seconds</th><th>cores (avg)</th><th>peak RSS MiB</th></tr>
{{range .Roles}}<tr><td>{{.Role}}</td><td class="n">{{.CPUSeconds}}</td><td class="n">{{.Cores}}</td><td class="n">{{.RSS}}</td></tr>
{{end}}</table>{{end}}
<div class="charts">
{{range .Charts}}{{$c := .}}<svg width="{{.W}}" height="{{.H}}" viewBox="0 0 {{.W}} {{.H}}" role="img" aria-label="{{.Title}} ({{.YUnit}})">
<text class="title" x="{{.X0}}" y="18">{{.Title}} ({{.YUnit}})</text>
{{range .YTicks}}<line class="grid" x1="{{$c.X0}}" x2="{{$c.X1}}" y1="{{.Pos}}" y2="{{.Pos}}"/><text x="{{$c.X0}}" dx="-5" y="{{.Pos}}" dy="4" text-anchor="end">{{.Label}}</text>
{{end}}{{range .XTicks}}<line class="axis" x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$c.Y0}}" y2="{{$c.TickEnd}}"/><text x="{{.Pos}}" y="{{$c.Y0}}" dy="16" text-anchor="middle">{{.Label}}</text>
{{end}}<line class="axis" x1="{{.X0}}" x2="{{.X1}}" y1="{{.Y0}}" y2="{{.Y0}}"/><line class="axis" x1="{{.X0}}" x2="{{.X0}}" y1="{{.Y0}}" y2="{{.Y1}}"/>
<text x="{{.MidX}}" y="{{.H}}" dy="-6" text-anchor="middle">{{.XUnit}}</text>
{{if .Empty}}<text x="{{.MidX}}" y="{{.MidY}}" text-anchor="middle">no data</text>
{{end}}{{range .Lines}}{{$l := .}}{{if .Path}}<path class="line {{.Class}}" d="{{.Path}}"/>{{end}}{{range .Dots}}<circle class="{{$l.Class}}" cx="{{.X}}" cy="{{.Y}}" r="3"/>{{end}}
{{if .Label}}<rect class="{{.Class}}" x="{{.LX}}" y="9" width="10" height="10"/><text x="{{.LX}}" dx="14" y="18">{{.Label}}</text>{{end}}
{{end}}</svg>
{{end}}</div>
</section>
{{end}}
</body>
</html>
`))
