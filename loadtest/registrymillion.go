package loadtest

// This file owns the registry-million scenario: a million webhooks (200,000
// in the short run) written straight into Redis, then
//   - the registry's load time at start: the processes are started again
//     and each reports geckohook_registry_load_seconds;
//   - heap bytes per webhook: each process's live heap after a forced
//     collection (runtime.MemStats.HeapAlloc, read from
//     /debug/pprof/heap?gc=1&debug=1), loaded minus the same process
//     started on an empty registry, divided by the webhooks;
//   - how long a change takes to reach every process while the flood runs:
//     1,000 changes through the API (creates, then deletes of the same
//     webhooks), timed by each process from the change's announcement to
//     applying it (geckohook_registry_change_delay_seconds), the p99 over
//     changes of the slowest process bounded by the union bound;
//   - paging through one application's webhooks with the API.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/registry"
)

// The registry-million scenario's targets.
const (
	targetRegistryLoadMs = 10_000
	targetRegistryBytes  = 300
	targetChangeP99Ms    = 1000
)

// Settings of the registry-million scenario.
const (
	millionChanges  = 1000                    // changes made while flooding: half creates, half deletes
	millionIssuers  = 16                      // change requests at a time
	millionPoll     = 50 * time.Millisecond   // how often every process's count is read
	millionVisible  = 10 * time.Second        // the most the last change may take to show
	millionPageSize = 1000                    // the API's largest page
	millionSettle   = 30 * time.Second        // after the flood
	millionWarmup   = 1500 * time.Millisecond // flood before the first change
	// millionStart is how long a process may take to load the registry and
	// become healthy: well past the load target, so that a slow load on a
	// busy machine is reported as a missed target rather than a failure.
	millionStart = 3 * time.Minute
)

func (s *suite) registryMillion(ctx context.Context) ([]Scenario, error) {
	if s.o.API != "" {
		fmt.Fprintf(s.o.Log, "registry-million: skipped: it restarts its own processes, and this run uses an existing deployment\n")
		return nil, nil
	}
	hooks := 1_000_000
	if s.o.Short {
		hooks = 200_000
	}
	// Account i has 1 + i%10 webhooks (5.5 on average), as in
	// registry-scale, over 10 applications and 16 farm servers.
	p := fanouts(hooks, 10, 16)
	// The short flood is longer than other scenarios' so that the
	// changes, slowed by it, are made while it runs.
	m := &million{log: s.o.Log, flood: s.sizes(30*time.Second, 15*time.Second)}
	return s.runOne(ctx, spec{name: "registry-million", partitions: 8, dispatchers: 2, servers: 16, plan: p,
		flood: m.flood, settle: millionSettle, deliverable: func(*PlanHook) bool { return true },
		register: m.register, during: m.changes})
}

// million is one run of the scenario.
type million struct {
	log   io.Writer
	flood time.Duration

	probeToken string // of the application the changes are made in
	probeURL   string // an address for the changes' webhooks (never called)
	hooks      int
}

func (m *million) logf(format string, args ...any) {
	fmt.Fprintf(m.log, "registry-million: "+format+"\n", args...)
}

// register creates the applications through the API, writes the webhooks
// into Redis, and takes the load and memory figures from processes started
// on the empty registry and again on the full one.
func (m *million) register(ctx context.Context, st *Stack, p *Plan, row *Scenario) error {
	if err := Register(ctx, st.API, st.AdminToken, &Plan{Event: p.Event, Apps: p.Apps}, 1, nil); err != nil {
		return err
	}
	var probe struct {
		Application struct{ Token string } `json:"application"`
	}
	in := map[string]any{"application": map[string]string{"name": "registry-million-changes", "developer_email": "bench@example.com"}}
	if err := apiJSON("POST", st.API+"/v1/applications", st.AdminToken, in, 201, &probe); err != nil {
		return fmt.Errorf("cannot create the changes' application: %w", err)
	}
	m.probeToken, m.hooks = probe.Application.Token, len(p.Hooks)
	u, err := url.Parse(p.Hooks[0].URL)
	if err != nil {
		return err
	}
	m.probeURL = "http://" + u.Host + "/changes/"

	empty, err := m.restart(ctx, st)
	if err != nil {
		return fmt.Errorf("cannot start geckohook on the empty registry: %w", err)
	}
	start := time.Now()
	if err := importPlan(ctx, st, p); err != nil {
		return err
	}
	m.logf("%d webhooks written into Redis in %s", len(p.Hooks), time.Since(start).Round(time.Millisecond))
	full, err := m.restart(ctx, st)
	if err != nil {
		return fmt.Errorf("cannot start geckohook on %d webhooks: %w", len(p.Hooks), err)
	}
	if err := m.startFigures(st, empty, full, row); err != nil {
		return err
	}
	note, err := listAll(st.API, p, biggestApp(p))
	if err != nil {
		return err
	}
	row.Notes = append(row.Notes, note)
	m.logf("%s", note)
	return nil
}

// startFigures puts the load time and heap per webhook of the processes
// started on the full registry into row.
func (m *million) startFigures(st *Stack, empty, full []started, row *Scenario) error {
	var perHook []string
	for i := range st.Geckohook {
		load, err := metricValue(st.Metrics[i], "geckohook_registry_load_seconds")
		if err != nil {
			return err
		}
		n, err := metricValue(st.Metrics[i], "geckohook_registry_webhooks")
		if err != nil {
			return err
		}
		if int(n) != m.hooks {
			return fmt.Errorf("geckohook %s holds %d webhooks, want %d", st.Roles[i], int(n), m.hooks)
		}
		b := float64(full[i].heap-empty[i].heap) / float64(m.hooks)
		row.RegistryLoadMs = max(row.RegistryLoadMs, load*1000)
		row.RegistryBytesPerWebhook = max(row.RegistryBytesPerWebhook, b)
		perHook = append(perHook, fmt.Sprintf("%s: load %.0f ms, ready %.0f ms after exec (%.0f ms on the empty registry) using %.0f ms of CPU (%.0f ms), %.0f heap B per webhook",
			st.Roles[i], load*1000, ms(full[i].ready), ms(empty[i].ready), ms(full[i].cpu), ms(empty[i].cpu), b))
	}
	row.Notes = append(row.Notes, "started on the full registry: "+strings.Join(perHook, "; "))
	row.Targets = append(row.Targets,
		CheckTarget("registry_load_ms", row.RegistryLoadMs, "<=", targetRegistryLoadMs),
		CheckTarget("registry_bytes_per_webhook", row.RegistryBytesPerWebhook, "<=", targetRegistryBytes))
	m.logf("%s", row.Notes[len(row.Notes)-1])
	return nil
}

// started is what restart saw of each process it started.
type started struct {
	heap  int64         // live heap after a collection, once healthy
	cpu   time.Duration // CPU time from exec to healthy (from /proc)
	ready time.Duration // wall time from exec to healthy
}

// restart stops the stack's geckohook processes and starts them again with
// profiles served.
func (m *million) restart(ctx context.Context, st *Stack) ([]started, error) {
	st.o.StartLimit = millionStart
	for i := len(st.Geckohook) - 1; i >= 0; i-- {
		st.Geckohook[i].Stop(20 * time.Second)
	}
	var out []started
	for i, role := range st.Roles {
		start := time.Now()
		p, metrics, err := st.StartGeckohook(ctx, role, true)
		if err != nil {
			return nil, err
		}
		s := started{ready: time.Since(start)}
		st.Geckohook[i], st.Metrics[i] = p, metrics
		if i == 0 {
			st.API = strings.TrimSuffix(metrics, "/metrics")
		}
		u, err := ReadUsage(p.Pid())
		if err != nil {
			return nil, err
		}
		s.cpu = u.CPU
		if s.heap, err = heapAlloc(st.Pprof); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// heapAlloc reads runtime.MemStats.HeapAlloc from a process's profiles
// after a forced collection.
func heapAlloc(pprof string) (int64, error) {
	code, body, err := apiDo("GET", pprof+"/debug/pprof/heap?gc=1&debug=1", "", nil)
	if err == nil && code != 200 {
		err = fmt.Errorf("answered %d", code)
	}
	if err != nil {
		return 0, fmt.Errorf("cannot read the heap of geckohook: %w", err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("the heap profile names no HeapAlloc")
}

// importPlan writes the plan's webhooks into Redis the way the registry
// stores them, with ids of the registry's shape.
func importPlan(ctx context.Context, st *Stack, p *Plan) error {
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: strings.Split(st.RedisAddr, ",")})
	defer rdb.Close()
	created := time.Now().UTC().Truncate(time.Second)
	hooks := make([]registry.Webhook, len(p.Hooks))
	raw := make([]byte, 12)
	for i := range p.Hooks {
		h := &p.Hooks[i]
		_, _ = rand.Read(raw)
		h.ID = "wh_" + hex.EncodeToString(raw)
		hooks[i] = registry.Webhook{ID: h.ID, AppID: p.Apps[h.App].ID, AccountID: AccountName(int(h.Account)),
			Event: p.Event, Address: h.URL, CreatedAt: created.Add(time.Duration(i) * time.Millisecond)}
	}
	if err := registry.New(rdb, registry.Options{}).Import(ctx, hooks); err != nil {
		return err
	}
	return nil
}

// biggestApp is the application with the most webhooks.
func biggestApp(p *Plan) int {
	n := make([]int, len(p.Apps))
	for i := range p.Hooks {
		n[p.Hooks[i].App]++
	}
	return slices.Index(n, slices.Max(n))
}

// listAll pages through application app's webhooks with the API's largest
// page and checks it got each of them once.
func listAll(api string, p *Plan, app int) (string, error) {
	want := 0
	for i := range p.Hooks {
		if p.Hooks[i].App == int32(app) {
			want++
		}
	}
	seen := make(map[string]bool, want)
	var took []time.Duration
	cursor := ""
	start := time.Now()
	for {
		var page struct {
			Webhooks   []struct{ ID string } `json:"webhooks"`
			NextCursor string                `json:"next_cursor"`
		}
		t := time.Now()
		q := api + "/v1/webhooks?limit=" + strconv.Itoa(millionPageSize) + "&cursor=" + url.QueryEscape(cursor)
		if err := apiJSON("GET", q, p.Apps[app].Token, nil, 200, &page); err != nil {
			return "", err
		}
		took = append(took, time.Since(t))
		for _, w := range page.Webhooks {
			if seen[w.ID] {
				return "", fmt.Errorf("listing %s: webhook %s came twice", p.Apps[app].Name, w.ID)
			}
			seen[w.ID] = true
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	if len(seen) != want {
		return "", fmt.Errorf("listing %s gave %d webhooks, want %d", p.Apps[app].Name, len(seen), want)
	}
	return fmt.Sprintf("API listing: %d webhooks of one application in %d pages of %d in %s; a page p50 %.1f ms, p99 %.1f ms",
		want, len(took), millionPageSize, time.Since(start).Round(time.Millisecond),
		ms(quantile(took, 0.5)), ms(quantile(took, 0.99))), nil
}

// quantile is the q-quantile of ds (nearest rank); it sorts ds.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[max(int(math.Ceil(q*float64(len(ds))))-1, 0)]
}

// changes makes millionChanges changes through the API while the flood
// runs: first creates (each webhook for an account of its own), then
// deletes of the same webhooks, millionIssuers requests at a time. Each
// process reports, in geckohook_registry_change_delay_seconds, how long
// every announced change took from its announcement (in the API process,
// inside the request) to being applied there; the figure is the p99 of the
// slowest process per change, bounded from above by the union bound over
// processes at the histogram's bucket resolution. Afterwards every process
// must hold the right count and have applied every change.
func (m *million) changes(ctx context.Context, st *Stack, row *Scenario) error {
	floodEnd := time.Now().Add(m.flood)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(millionWarmup):
	}
	before, err := delayHistograms(st)
	if err != nil {
		return err
	}
	creates := m.issue(millionChanges/2, func(k int) (string, error) { return m.create(st.API, k) })
	if err := issuedErr(creates); err != nil {
		return err
	}
	if err := m.holdEverywhere(ctx, st, m.hooks+len(creates)); err != nil {
		return err
	}
	deletes := m.issue(len(creates), func(k int) (string, error) { return creates[k].id, m.delete(st.API, creates[k].id) })
	if err := issuedErr(deletes); err != nil {
		return err
	}
	if err := m.holdEverywhere(ctx, st, m.hooks); err != nil {
		return err
	}
	after, err := delayHistograms(st)
	if err != nil {
		return err
	}
	n := len(creates) + len(deletes)
	var got []histogram
	var typical []string
	for i := range after {
		d := after[i].minus(before[i])
		if d.count != n {
			return fmt.Errorf("geckohook %s applied %d of the %d changes", st.Roles[i], d.count, n)
		}
		got = append(got, d)
		typical = append(typical, fmt.Sprintf("%s p50 ≤ %.0f ms", st.Roles[i], 1000*unionQuantile([]histogram{d}, 0.5)))
	}
	p99 := unionQuantile(got, 0.99)
	if math.IsInf(p99, 1) {
		return fmt.Errorf("more than 1%% of the changes took longer than the histogram's last bound to reach every process")
	}
	row.ChangeP99Ms = p99 * 1000
	row.Targets = append(row.Targets, CheckTarget("change_p99_ms", row.ChangeP99Ms, "<=", targetChangeP99Ms))
	var answer []time.Duration
	late := 0
	for _, c := range append(creates, deletes...) {
		answer = append(answer, c.answered.Sub(c.sent))
		if c.answered.After(floodEnd) {
			late++
		}
	}
	note := fmt.Sprintf("%d changes through the API (%d creates, then their deletes, %d requests at a time): each reached every process (%d) within %.0f ms at p99 (union bound over processes, histogram buckets; %s); the API answered them in p50 %.1f ms, p99 %.1f ms",
		n, len(creates), millionIssuers, len(st.Geckohook), row.ChangeP99Ms, strings.Join(typical, ", "), ms(quantile(answer, 0.5)), ms(quantile(answer, 0.99)))
	if late > 0 {
		note += fmt.Sprintf("; %d of them after the flood ended", late)
	}
	row.Notes = append(row.Notes, note)
	m.logf("%s", note)
	return nil
}

// histogram is a Prometheus histogram read from /metrics: cumulative
// counts by ascending upper bound.
type histogram struct {
	bounds []float64
	cum    []int
	count  int
}

func (h histogram) minus(o histogram) histogram {
	d := histogram{bounds: h.bounds, cum: make([]int, len(h.cum)), count: h.count - o.count}
	for i := range h.cum {
		d.cum[i] = h.cum[i]
		if i < len(o.cum) {
			d.cum[i] -= o.cum[i]
		}
	}
	return d
}

// unionQuantile bounds from above the q-quantile, over the changes every
// process of hs observed once each, of the slowest process's delay: the
// smallest bucket bound b for which the processes' counts above b add up
// to at most (1-q) of the changes, since the slowest exceeds b only when
// some process does. +Inf when no bucket bound does.
func unionQuantile(hs []histogram, q float64) float64 {
	if len(hs) == 0 {
		return math.Inf(1)
	}
	for _, b := range hs[0].bounds { // ascending
		sum := 0.0
		for _, h := range hs {
			sum += h.above(b)
		}
		if sum <= (1-q)*float64(hs[0].count) {
			return b
		}
	}
	return math.Inf(1)
}

// above is how many observations exceeded bound (a bound of h).
func (h histogram) above(bound float64) float64 {
	i := slices.Index(h.bounds, bound)
	if i < 0 {
		return float64(h.count)
	}
	return float64(h.count - h.cum[i])
}

// delayHistograms reads geckohook_registry_change_delay_seconds from
// every process.
func delayHistograms(st *Stack) ([]histogram, error) {
	var out []histogram
	for _, u := range st.Metrics {
		code, body, err := httpGet(u)
		if err == nil && code != 200 {
			err = fmt.Errorf("%s answered %d", u, code)
		}
		if err != nil {
			return nil, err
		}
		h, err := parseHistogram(body, "geckohook_registry_change_delay_seconds")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", u, err)
		}
		out = append(out, h)
	}
	return out, nil
}

// parseHistogram reads the unlabelled histogram name from a /metrics page.
func parseHistogram(page, name string) (histogram, error) {
	var h histogram
	found := false
	for _, line := range strings.Split(page, "\n") {
		if rest, ok := strings.CutPrefix(line, name+`_bucket{le="`); ok {
			le, v, ok := strings.Cut(rest, `"} `)
			if !ok || le == "+Inf" {
				continue
			}
			b, err1 := strconv.ParseFloat(le, 64)
			n, err2 := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err1 != nil || err2 != nil {
				return h, fmt.Errorf("cannot parse %q", line)
			}
			h.bounds, h.cum = append(h.bounds, b), append(h.cum, int(n))
		} else if v, ok := strings.CutPrefix(line, name+"_count "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return h, fmt.Errorf("cannot parse %q", line)
			}
			h.count, found = int(n), true
		}
	}
	if !found {
		return h, fmt.Errorf("no %s", name)
	}
	return h, nil
}

func issuedErr(cs []issued) error {
	for _, c := range cs {
		if c.err != nil {
			return c.err
		}
	}
	return nil
}

// issued is one change made by issue.
type issued struct {
	id             string
	sent, answered time.Time
	err            error
}

// issue makes n changes with millionIssuers requests at a time.
func (m *million) issue(n int, change func(k int) (string, error)) []issued {
	out := make([]issued, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range millionIssuers {
		wg.Go(func() {
			for {
				k := int(next.Add(1) - 1)
				if k >= n {
					return
				}
				c := &out[k]
				c.sent = time.Now()
				c.id, c.err = change(k)
				c.answered = time.Now()
				if c.err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	return out
}

// create makes webhook k of the changes and returns its id.
func (m *million) create(api string, k int) (string, error) {
	var out struct {
		Webhook struct{ ID string } `json:"webhook"`
	}
	account := "changes-" + strconv.Itoa(k)
	in := map[string]any{"webhook": map[string]string{"account_id": account, "event": "order.create", "address": m.probeURL + account}}
	err := apiJSON("POST", api+"/v1/webhooks", m.probeToken, in, 201, &out)
	return out.Webhook.ID, err
}

// delete deletes a webhook of the changes.
func (m *million) delete(api, id string) error {
	code, body, err := apiDo("DELETE", api+"/v1/webhooks/"+id, m.probeToken, nil)
	if err == nil && code != 204 {
		err = fmt.Errorf("DELETE webhook %s answered %d: %.200s", id, code, body)
	}
	return err
}

// holdEverywhere polls every process until each holds want webhooks.
func (m *million) holdEverywhere(ctx context.Context, st *Stack, want int) error {
	deadline := time.Now().Add(millionVisible)
	pending := slices.Clone(st.Metrics)
	for {
		left := pending[:0]
		for _, u := range pending {
			if n, err := metricValue(u, "geckohook_registry_webhooks"); err != nil || int(n) != want {
				left = append(left, u)
			}
		}
		if pending = left; len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d processes do not hold %d webhooks after %s (%s)", len(pending), want, millionVisible, strings.Join(pending, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(millionPoll):
		}
	}
}

// registryNote is the report's line for the registry-million figures.
func registryNote(s *Scenario) string {
	if reportRound(s.RegistryLoadMs, 100) == 0 && reportRound(s.RegistryBytesPerWebhook, 10) == 0 && reportRound(s.ChangeP99Ms, 100) == 0 {
		return ""
	}
	return fmt.Sprintf("registry of %d webhooks: loaded at start in %.0f ms, %.0f heap bytes per webhook, a change visible everywhere in %.0f ms p99",
		s.Webhooks, s.RegistryLoadMs, s.RegistryBytesPerWebhook, s.ChangeP99Ms)
}
