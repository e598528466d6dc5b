package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/geckohook/geckohook/internal/testenv"
)

// exportedMetrics are the metric names geckohook exports, the only ones
// alerts.yml and the dashboard may use. Histograms are listed by their
// base name (their _bucket, _sum and _count series are allowed);
// go_gc_duration_seconds is a summary (_sum and _count). The go_ and
// process_ names are the runtime metrics both VictoriaMetrics' metrics and
// the Prometheus client export. TestPrometheusScrapesATarget proves the
// helper that will check these against a running `geckohook all`.
var exportedMetrics = map[string]bool{
	"geckohook_events_total":                      false,
	"geckohook_dead_letters_total":                false,
	"geckohook_deliveries_total":                  false,
	"geckohook_retries_scheduled_total":           false,
	"geckohook_retries_in_flight":                 false,
	"geckohook_retries_claimed_total":             false,
	"geckohook_deliveries_dead_total":             false,
	"geckohook_shards":                            false,
	"geckohook_retry_queue_deliveries":            false,
	"geckohook_outcomes_total":                    false,
	"geckohook_coordinator_outcomes_total":        false,
	"geckohook_webhooks_deleted_total":            false,
	"geckohook_coordinator_caught_up":             false,
	"geckohook_coordinator_commit_failures_total": false,
	"geckohook_coordinator_watermark_age_seconds": false,
	"geckohook_health_conflicts_total":            false,
	"geckohook_digests_total":                     false,
	"geckohook_digest_days_skipped_total":         false,
	"geckohook_api_requests_total":                false,
	"geckohook_attempt_duration_seconds":          true, // histogram
	"geckohook_delivery_latency_seconds":          true, // histogram
	"geckohook_consumer_lag":                      false,
	"geckohook_registry_webhooks":                 false,
	"geckohook_registry_applications":             false,
	"geckohook_registry_load_seconds":             false,
	"geckohook_registry_change_delay_seconds":     true, // histogram
	"geckohook_hosts_throttled":                   false,
	"geckohook_redis_up":                          false,
	"geckohook_offset_commit_failures_total":      false,
	"go_goroutines":                               false,
	"go_memstats_heap_inuse_bytes":                false,
	"go_memstats_sys_bytes":                       false,
	"go_gc_duration_seconds":                      true, // summary
	"process_cpu_seconds_total":                   false,
	"process_resident_memory_bytes":               false,
	"process_open_fds":                            false,
}

var (
	// quoted drops PromQL string literals (label values such as
	// job="geckohook-api"), which are not metric names.
	quoted     = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	metricName = regexp.MustCompile(`(?:^|[^A-Za-z0-9_:])((?:geckohook|go|process)_[A-Za-z0-9_:]*)`)
)

// metricNames returns the geckohook_, go_ and process_ names in a PromQL
// expression (or a text mentioning them), as written.
func metricNames(expr string) []string {
	var out []string
	for _, m := range metricName.FindAllStringSubmatch(quoted.ReplaceAllString(expr, " "), -1) {
		out = append(out, m[1])
	}
	return out
}

// unknownMetric says why name is not one geckohook exports, or "".
func unknownMetric(name string, allowBuckets bool) string {
	if _, ok := exportedMetrics[name]; ok {
		return ""
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok || !exportedMetrics[base] {
			continue
		}
		if suffix == "_bucket" && !allowBuckets {
			return "alert rules use _sum and _count, not buckets (their layout depends on the metrics library)"
		}
		return ""
	}
	return "geckohook does not export it"
}

// ruleFile is the part of a Prometheus rule file the checks read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// checkAlerts returns the problems of an alert rule file: unknown metrics,
// quantiles, and alerts without a for:, a severity, a summary or a
// description.
func checkAlerts(data []byte) (alerts []string, problems []error) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }
	var rf ruleFile
	if err := yaml.Unmarshal(data, &rf); err != nil {
		bad("cannot parse the rule file: %v", err)
		return nil, problems
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				bad("group %s: a rule without alert (%q); this file holds alerts only", g.Name, r.Record)
				continue
			}
			alerts = append(alerts, r.Alert)
			if d, err := time.ParseDuration(r.For); err != nil || d <= 0 {
				bad("%s: for: %q; every alert waits out a blip", r.Alert, r.For)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				bad("%s: severity %q, want critical or warning", r.Alert, s)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					bad("%s: no %s annotation", r.Alert, a)
				}
			}
			if strings.Contains(r.Expr, "histogram_quantile") {
				bad("%s: histogram_quantile belongs in the dashboard; alert on _sum/_count rates", r.Alert)
			}
			texts := []string{r.Expr, r.Annotations["summary"], r.Annotations["description"]}
			for _, text := range texts {
				for _, name := range metricNames(text) {
					if why := unknownMetric(name, false); why != "" {
						bad("%s uses %s: %s", r.Alert, name, why)
					}
				}
			}
			if len(metricNames(r.Expr)) == 0 && !strings.Contains(r.Expr, "up{") {
				bad("%s: expression %q names no geckohook metric", r.Alert, r.Expr)
			}
		}
	}
	return alerts, problems
}

// dashboardQueries returns every query of a Grafana dashboard model: each
// string under an "expr", "query" or "definition" key, panels and
// template variables alike.
func dashboardQueries(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && (k == "expr" || k == "query" || k == "definition") {
				out = append(out, s)
				continue
			}
			out = append(out, dashboardQueries(x)...)
		}
	case []any:
		for _, x := range v {
			out = append(out, dashboardQueries(x)...)
		}
	}
	return out
}

func TestAlertsUseExportedMetrics(t *testing.T) {
	alerts, problems := checkAlerts(readDeploy(t, "prometheus/alerts.yml"))
	for _, err := range problems {
		t.Error(err)
	}
	if len(alerts) < 10 {
		t.Errorf("only %d alerts: %q", len(alerts), alerts)
	}
	// The checks see a wrong name, a bucket and a missing for:.
	f := func(old, new, want string) {
		t.Helper()
		data := string(readDeploy(t, "prometheus/alerts.yml"))
		if !strings.Contains(data, old) {
			t.Fatalf("alerts.yml no longer contains %q; update this case", old)
		}
		_, problems := checkAlerts([]byte(strings.Replace(data, old, new, 1)))
		if !slices.ContainsFunc(problems, func(err error) bool { return strings.Contains(err.Error(), want) }) {
			t.Errorf("replacing %q with %q: problems %q, want one containing %q", old, new, problems, want)
		}
	}
	f("expr: geckohook_redis_up == 0", "expr: geckohook_redis_ok == 0", "uses geckohook_redis_ok: geckohook does not export it")
	f("expr: geckohook_redis_up == 0", `expr: geckohook_attempt_duration_seconds_bucket{le="+Inf"} == 0`, "not buckets")
	f("geckohook_redis_up == 0\n        for: 1m", "geckohook_redis_up == 0\n        for: 0s", "every alert waits out a blip")
	f("severity: critical", "severity: page", `severity "page"`)
}

func TestDashboardUsesExportedMetrics(t *testing.T) {
	var model map[string]any
	if err := json.Unmarshal(readDeploy(t, "grafana/geckohook.json"), &model); err != nil {
		t.Fatalf("grafana/geckohook.json: %v", err)
	}
	queries := dashboardQueries(model)
	used := map[string]bool{}
	for _, q := range queries {
		for _, name := range metricNames(q) {
			if why := unknownMetric(name, true); why != "" {
				t.Errorf("dashboard query %q uses %s: %s", q, name, why)
			}
			used[name] = true
		}
	}
	// Every panel the on-call engineer needs is there.
	for _, name := range []string{
		"geckohook_deliveries_total", "geckohook_attempt_duration_seconds_bucket", "geckohook_delivery_latency_seconds_bucket",
		"geckohook_consumer_lag", "geckohook_retry_queue_deliveries", "geckohook_deliveries_dead_total",
		"geckohook_hosts_throttled", "geckohook_registry_webhooks", "geckohook_coordinator_watermark_age_seconds",
		"geckohook_digests_total", "process_cpu_seconds_total", "process_resident_memory_bytes", "go_goroutines",
	} {
		if !used[name] {
			t.Errorf("the dashboard has no panel on %s", name)
		}
	}
	if got := metricNames(`sum(rate(geckohook_x_total{job="geckohook_api"}[5m])) / go_y`); !slices.Equal(got, []string{"geckohook_x_total", "go_y"}) {
		t.Errorf("metricNames = %q", got)
	}
}

// prometheus is a real Prometheus server started for one test, scraping
// targets on loopback every second.
type prometheus struct {
	URL string
	out *syncBuffer
}

// startPrometheus runs the prometheus binary with a temp config that
// scrapes each job's targets (host:port, path /metrics) every second, and
// waits until it is ready. It is killed when the test ends.
func startPrometheus(t *testing.T, jobs map[string][]string) *prometheus {
	t.Helper()
	bin := testenv.Tool(t, "prometheus")
	dir := t.TempDir()
	var cfg strings.Builder
	cfg.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n")
	for job, targets := range jobs {
		quotedTargets := make([]string, len(targets))
		for i, tg := range targets {
			quotedTargets[i] = strconv.Quote(tg)
		}
		fmt.Fprintf(&cfg, "  - job_name: %q\n    static_configs:\n      - targets: [%s]\n", job, strings.Join(quotedTargets, ", "))
	}
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// Prometheus cannot say which port it took, so it gets a free one; if
	// another process takes it first, it exits and the next one is tried.
	for attempt := 0; attempt < 5; attempt++ {
		port, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p, err := launchPrometheus(t, bin, "--config.file="+config, "--storage.tsdb.path="+filepath.Join(dir, fmt.Sprint("data", attempt)),
			"--web.listen-address="+addr, "--log.level=warn")
		if err == nil {
			return p
		}
		t.Logf("%v; trying another port", err)
	}
	t.Fatal("prometheus did not start on any of 5 free ports")
	return nil
}

// launchPrometheus starts prometheus with args and waits until it answers
// /-/ready on its --web.listen-address; an error says it exited first.
func launchPrometheus(t *testing.T, bin string, args ...string) (*prometheus, error) {
	t.Helper()
	var addr string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--web.listen-address="); ok {
			addr = v
		}
	}
	out := &syncBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	p := &prometheus{URL: "http://" + addr, out: out}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			return nil, fmt.Errorf("prometheus exited (%v):\n%s", err, out)
		default:
		}
		resp, err := http.Get(p.URL + "/-/ready")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
				if t.Failed() {
					t.Logf("prometheus output:\n%s", out)
				}
			})
			return p, nil
		}
	}
	_ = cmd.Process.Kill()
	<-exited
	t.Fatalf("prometheus not ready within 30s:\n%s", out)
	return nil, nil
}

// sample is one series of an instant query's answer.
type sample struct {
	Labels map[string]string
	Value  float64
}

// Query runs an instant PromQL query through the HTTP API.
func (p *prometheus) Query(q string) ([]sample, error) {
	resp, err := http.Get(p.URL + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	var answer struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return nil, fmt.Errorf("query %q: cannot parse %q: %w", q, body, err)
	}
	if answer.Status != "success" {
		return nil, fmt.Errorf("query %q: %s", q, answer.Error)
	}
	if answer.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: result type %s, want vector", q, answer.Data.ResultType)
	}
	out := make([]sample, len(answer.Data.Result))
	for i, r := range answer.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %q: value %v: %w", q, r.Value[1], err)
		}
		out[i] = sample{Labels: r.Metric, Value: v}
	}
	return out, nil
}

// WaitFor polls q until it returns at least one series and returns them.
func (p *prometheus) WaitFor(t *testing.T, q string, timeout time.Duration) []sample {
	t.Helper()
	var got []sample
	testenv.WaitFor(t, timeout, func() (err error) {
		if got, err = p.Query(q); err == nil && len(got) == 0 {
			err = fmt.Errorf("query %q: no series yet", q)
		}
		return err
	})
	return got
}

// The Prometheus helper against a target exposing one gauge: Prometheus
// scrapes it, and the query API answers with its value and job. The same
// server then checks that the dashboard's queries are valid PromQL.
func TestPrometheusScrapesATarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		io.WriteString(w, "# HELP deploy_test_gauge A gauge for the Prometheus helper.\n# TYPE deploy_test_gauge gauge\ndeploy_test_gauge{shard=\"3\"} 42\n")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	p := startPrometheus(t, map[string][]string{"target": {ln.Addr().String()}})
	got := p.WaitFor(t, "deploy_test_gauge", 30*time.Second)
	if len(got) != 1 || got[0].Value != 42 || got[0].Labels["job"] != "target" || got[0].Labels["shard"] != "3" ||
		got[0].Labels["instance"] != ln.Addr().String() {
		t.Errorf("deploy_test_gauge = %+v, want one series 42 with job target, shard 3, instance %s", got, ln.Addr())
	}
	if up := p.WaitFor(t, `up{job="target"}`, 10*time.Second); up[0].Value != 1 {
		t.Errorf("up = %v", up)
	}
	if _, err := p.Query("sum(("); err == nil {
		t.Error("a bad query returned no error")
	}

	// While it runs: Prometheus itself accepts every dashboard query, with
	// Grafana's interval variable as Grafana fills it in.
	var model map[string]any
	if err := json.Unmarshal(readDeploy(t, "grafana/geckohook.json"), &model); err != nil {
		t.Fatal(err)
	}
	for _, q := range dashboardQueries(model) {
		if q == "prometheus" { // the data source variable's plugin type
			continue
		}
		if _, err := p.Query(strings.ReplaceAll(q, "$__rate_interval", "1m")); err != nil {
			t.Errorf("dashboard: %v", err)
		}
	}
}

// MetricNames lists every metric name Prometheus holds.
func (p *prometheus) MetricNames() ([]string, error) {
	resp, err := http.Get(p.URL + "/api/v1/label/__name__/values")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var answer struct {
		Status string   `json:"status"`
		Data   []string `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&answer); err != nil {
		return nil, fmt.Errorf("metric names: %w", err)
	}
	if answer.Status != "success" {
		return nil, fmt.Errorf("metric names: status %s", answer.Status)
	}
	return answer.Data, nil
}

// pendingMetrics are names in exportedMetrics that geckohook does not
// export yet: the metrics work adds them. Once it has landed this set is
// empty and TestPrometheusScrapesGeckohookAll checks every name.
var pendingMetrics = map[string]bool{}

// A real Prometheus scraping `geckohook all` finds every metric the alerts
// and the dashboard may use (but those still pending).
func TestPrometheusScrapesGeckohookAll(t *testing.T) {
	kafkaAddr, apiAddr := freeAddr(t), freeAddr(t)
	startProcess(t, "all", "--embedded-kafka-listen", kafkaAddr, "--api-listen", apiAddr, "--partitions", "2",
		"--mail-outbox", t.TempDir(), "--log-format", "json")
	testenv.WaitFor(t, 30*time.Second, func() error {
		// Also the request geckohook_api_requests_total needs to have a series.
		code, _, err := get("http://" + apiAddr + "/healthz")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("healthz %d", code)
		}
		return err
	})
	p := startPrometheus(t, map[string][]string{"geckohook-all": {apiAddr}})
	p.WaitFor(t, `geckohook_shards{job="geckohook-all"} > 0`, 60*time.Second)

	names, err := p.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for name, histogram := range exportedMetrics {
		want := name
		if histogram {
			want += "_count"
		}
		exported := slices.Contains(names, want)
		switch {
		case pendingMetrics[name] && exported:
			t.Logf("%s is exported now: remove it from pendingMetrics", name)
		case !pendingMetrics[name] && !exported:
			t.Errorf("geckohook all does not export %s, which the alerts or the dashboard may use", want)
		}
	}
	for name := range pendingMetrics {
		if _, ok := exportedMetrics[name]; !ok {
			t.Errorf("pendingMetrics names %s, which exportedMetrics does not", name)
		}
	}
}

// runAlertTests runs alerts_test.yml through promtool against rules, with
// the rules' annotations dropped (the cases leave them out, and promtool
// would compare them).
func runAlertTests(t *testing.T, promtool string, rules []byte) ([]byte, error) {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(rules, &doc); err != nil {
		t.Fatal(err)
	}
	groups, _ := doc["groups"].([]any)
	for _, g := range groups {
		rs, _ := g.(map[string]any)["rules"].([]any)
		for _, r := range rs {
			delete(r.(map[string]any), "annotations")
		}
	}
	stripped, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string][]byte{"alerts.yml": stripped, "alerts_test.yml": readDeploy(t, "prometheus/alerts_test.yml")} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "test", "rules", "alerts_test.yml")
	cmd.Dir = dir
	return cmd.CombinedOutput()
}

// Each alert fires when it should and stays quiet when it should not, on
// synthetic series (deploy/prometheus/alerts_test.yml).
func TestAlertRulesFire(t *testing.T) {
	promtool := testenv.Tool(t, "promtool")
	rules := readDeploy(t, "prometheus/alerts.yml")
	if out, err := runAlertTests(t, promtool, rules); err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}

	// Every alert has a case where it fires.
	var cases struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(readDeploy(t, "prometheus/alerts_test.yml"), &cases); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range cases.Tests {
		for _, a := range tc.AlertRuleTest {
			fires[a.Alertname] = fires[a.Alertname] || len(a.ExpAlerts) > 0
		}
	}
	alerts, _ := checkAlerts(rules)
	for _, a := range alerts {
		if !fires[a] {
			t.Errorf("alerts_test.yml has no case where %s fires", a)
		}
	}

	// And the cases are really checked: a rule that cannot fire fails them.
	broken := strings.Replace(string(rules), "expr: geckohook_redis_up == 0", "expr: geckohook_redis_up == 2", 1)
	if broken == string(rules) {
		t.Fatal("alerts.yml no longer has the Redis rule this case breaks; update it")
	}
	if out, err := runAlertTests(t, promtool, []byte(broken)); err == nil || !strings.Contains(string(out), "GeckohookRedisUnreachable") {
		t.Errorf("a broken Redis rule passed promtool test rules (%v):\n%s", err, out)
	}
}
