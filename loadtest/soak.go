package loadtest

// This file owns the soak behind `make soak`: a paced flood into geckohook
// processes (an API, a coordinator, several dispatchers) while the chaos of
// chaos.go kills and restarts them, restarts redis-server and makes
// endpoint groups fail, hang, drop connections and answer 410; then the
// chaos stops, everything settles, and every (event, webhook) pair must be
// delivered, dead, or gone with its deleted webhook, the retry queues
// agreeing with the ledger.

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/shard"
)

// SoakOptions configures a soak.
type SoakOptions struct {
	Out       string // results directory (process logs)
	Log       io.Writer
	Geckohook string // geckohook binary
	RedisBin  string // redis-server binary

	Duration    time.Duration // of the flood and the chaos (default 10 minutes)
	Settle      time.Duration // the most to wait afterwards for every pair to settle (default 4 minutes)
	Key         uint64        // the number the chaos and the endpoint windows are drawn from
	Rate        float64       // events/s (default 200)
	Accounts    int           // accounts of the plan, two webhooks each (default 200)
	Dispatchers int           // dispatcher processes besides the extra one of rebalances (default 2)
	Partitions  int           // of the events topic (default 8)
}

// SoakSummary is the outcome of a soak, written into report.json.
type SoakSummary struct {
	Key             uint64            `json:"key"`
	DurationSec     float64           `json:"duration_sec"` // of the flood and the chaos
	SettledSec      float64           `json:"settled_sec"`  // from the flood's end until everything settled (or the limit)
	RatePerSec      float64           `json:"rate_per_sec"`
	Faults          map[FaultKind]int `json:"faults"`           // injected, by kind
	UnexpectedExits int               `json:"unexpected_exits"` // geckohook processes that ended on their own (restarted)
	Account         SoakAccount       `json:"account"`
	Passed          bool              `json:"passed"`
	Failures        []string          `json:"failures,omitempty"`
	Errors          []string          `json:"errors,omitempty"` // chaos steps that failed
}

// PairKey names one (event, webhook) pair: event number, hook index.
type PairKey struct{ Event, Hook int }

// QueueSnapshot is what the retry queues hold, by pair.
type QueueSnapshot struct {
	Scheduled map[PairKey]int // records due for a retry (or leased)
	Dead      map[PairKey]int // records in the dead sets
	Foreign   int             // records that name no pair of the plan
}

// SoakAccount settles every expected pair of a soak. Delivered, Dead,
// Deleted, Pending and Missing add up to Expected.
type SoakAccount struct {
	Expected  int64 `json:"expected"`
	Delivered int64 `json:"delivered"` // answered 2xx at least once
	Dead      int64 `json:"dead"`      // not delivered, in a dead set
	Deleted   int64 `json:"deleted"`   // not delivered, its webhook deleted after a 410
	Pending   int64 `json:"pending"`   // not delivered, still scheduled for a retry
	Missing   int64 `json:"missing"`   // none of the above: lost

	Duplicates    int64 `json:"duplicates"`     // 2xx answers beyond a pair's first
	IDMismatches  int64 `json:"id_mismatches"`  // requests whose delivery id differs from their pair's first
	BadSignatures int64 `json:"bad_signatures"` // requests with an invalid signature
	Unexpected    int64 `json:"unexpected"`     // requests that match no expected pair
	// Stale: records scheduled for a pair already settled (delivered,
	// dead or deleted): a retry queue out of step with the ledger.
	Stale int64 `json:"stale"`
	// DeadDelivered: dead records of pairs the farm answered 2xx (an
	// answer geckohook never saw, e.g. past its request timeout).
	DeadDelivered  int64 `json:"dead_delivered"`
	ForeignRecords int64 `json:"foreign_records"` // queue records naming no pair of the plan
	DeletedHooks   int   `json:"deleted_hooks"`
	// UnaskedDeletions: webhooks deleted whose endpoint never answered 410.
	UnaskedDeletions int `json:"unasked_deletions"`

	MissingSamples []string `json:"missing_samples,omitempty"`
	PendingSamples []string `json:"pending_samples,omitempty"`
	StaleSamples   []string `json:"stale_samples,omitempty"`
}

// Failures names what makes the account fail, empty when it passes:
// anything missing or still pending, stale queue records, two delivery ids
// for one pair, bad signatures, requests for no pair.
func (a SoakAccount) Failures() []string {
	var fs []string
	add := func(n int64, what string, samples []string) {
		if n == 0 {
			return
		}
		s := fmt.Sprintf("%d %s", n, what)
		if len(samples) > 0 {
			s += ", e.g. " + strings.Join(samples, "; ")
		}
		fs = append(fs, s)
	}
	add(a.Missing, "pairs missing (not delivered, dead, deleted or scheduled)", a.MissingSamples)
	add(a.Pending, "pairs still scheduled for a retry after settling", a.PendingSamples)
	add(a.Stale, "retry records scheduled for pairs already settled", a.StaleSamples)
	add(a.IDMismatches, "re-sent requests carried another delivery id than their pair's first", nil)
	add(a.BadSignatures, "requests with a bad signature", nil)
	add(a.Unexpected, "requests no pair expected", nil)
	add(int64(a.UnaskedDeletions), "webhooks deleted without ever answering 410", nil)
	return fs
}

// GoneSlack is how long before its endpoint began answering 410 an event
// may be produced and still never be sent to the webhook: the deletion can
// overtake events waiting behind a rebalance or a restart. An older event
// never sent to a deleted webhook is missing, not deleted.
const GoneSlack = time.Minute

// AccountSoak settles every pair of the ledger against the retry queues'
// contents and the webhooks deleted: pure, no I/O. deleted (may be nil)
// says whether a hook's webhook is gone and since when its endpoint was
// answering 410 (zero: it never was told to). An undelivered pair of a
// deleted webhook counts as deleted when it was sent at least once or its
// event came at most GoneSlack before the 410s began; the pairs of a
// webhook deleted without ever answering 410 are missing.
func AccountSoak(l *Ledger, q QueueSnapshot, deleted func(hook int) (bool, time.Time)) SoakAccount {
	base := l.Account(nil, nil) // for the request-level counts
	a := SoakAccount{Expected: base.Expected, IDMismatches: base.IDMismatches,
		BadSignatures: base.BadSignatures, Unexpected: base.Unexpected, ForeignRecords: int64(q.Foreign)}
	gone := make([]bool, len(l.plan.Hooks))
	goneFrom := make([]time.Time, len(l.plan.Hooks))
	for h := range gone {
		if deleted != nil {
			gone[h], goneFrom[h] = deleted(h)
		}
		if gone[h] {
			a.DeletedHooks++
			if goneFrom[h].IsZero() {
				a.UnaskedDeletions++
			}
		}
	}
	sample := func(list *[]string, e, hook int, what string) {
		if len(*list) < maxMissingSamples {
			*list = append(*list, fmt.Sprintf("event %d → hook %d (%s)", e, hook, what))
		}
	}
	l.EachPair(func(e, hook, ok, reqs int) {
		k := PairKey{e, hook}
		sched, dead := q.Scheduled[k] > 0, q.Dead[k] > 0
		settled := true
		switch {
		case ok > 0:
			a.Delivered++
			a.Duplicates += int64(ok - 1)
			if dead {
				a.DeadDelivered++
			}
		case dead:
			a.Dead++
		case gone[hook] && !goneFrom[hook].IsZero() && (reqs > 0 || !l.ProducedAt(e).Before(goneFrom[hook].Add(-GoneSlack))):
			a.Deleted++
		case sched:
			a.Pending++
			settled = false
			sample(&a.PendingSamples, e, hook, "scheduled")
		default:
			a.Missing++
			settled = false
			what := l.plan.Hooks[hook].URL
			if gone[hook] {
				what += ", webhook deleted but this event was never sent to it"
			}
			sample(&a.MissingSamples, e, hook, what)
		}
		if settled && sched {
			a.Stale++
			sample(&a.StaleSamples, e, hook, "scheduled though settled")
		}
	})
	return a
}

// ReadQueues reads every record of every registered shard's retry queue,
// scheduled and dead, and names each by its pair: hooks maps a webhook id
// to its hook index, the event is the body's object_id.
func ReadQueues(ctx context.Context, rdb redis.UniversalClient, store *shard.Store, hooks map[string]int) (QueueSnapshot, error) {
	q := QueueSnapshot{Scheduled: map[PairKey]int{}, Dead: map[PairKey]int{}}
	qs, err := store.Queues(ctx)
	if err != nil {
		return q, err
	}
	for _, sq := range qs {
		for _, part := range []struct {
			state shard.State
			to    map[PairKey]int
		}{{shard.Scheduled, q.Scheduled}, {shard.Dead, q.Dead}} {
			recs, unreadable, err := sq.Records(ctx, part.state)
			if err != nil {
				return q, err
			}
			q.Foreign += unreadable
			for _, rec := range recs {
				h, ok := hooks[rec.WebhookID]
				e := scanObjectID(rec.Body)
				if !ok || e < 0 {
					q.Foreign++
					continue
				}
				part.to[PairKey{e, h}]++
			}
		}
	}
	return q, nil
}

// SoakPlan is the soak's plan: accounts with two webhooks each, every
// fortieth block of hooks laid out as ten in a hundred failing in windows,
// five hanging and five dropping connections (each group on farm servers
// of its own, as a dead host would be), two and a half answering 410 and
// two and a half in a long outage; the rest healthy. kinds and groups say
// which fault each hook takes part in ("" for none). The farm needs
// 12 + 2·groups servers.
func SoakPlan(accounts, groups int) (p *Plan, kinds []FaultKind, group []int) {
	p = &Plan{Event: "order.create"}
	const apps = 4
	for a := 0; a < apps; a++ {
		p.Apps = append(p.Apps, PlanApp{Name: fmt.Sprintf("soak-app-%d", a)})
	}
	for a := 0; a < accounts; a++ {
		srvs := make([]int, 2)
		for pos := range srvs {
			h := 2*a + pos
			g := (h / 40) % groups
			var k FaultKind
			srv := h % 12
			switch m := h % 40; {
			case m < 4:
				k = EndpointFail
			case m < 6:
				k, srv = EndpointHang, 12+g
			case m < 8:
				k, srv = EndpointDrop, 12+groups+g
			case m == 8:
				k = EndpointGone
			case m == 9:
				k, g = EndpointOutage, 0
			}
			srvs[pos] = srv
			kinds, group = append(kinds, k), append(group, g)
		}
		p.AddAccount(int32(a%apps), srvs, make([]EndpointBehaviour, 2))
	}
	return p, kinds, group
}

// RunSoak runs a soak and returns its report (one row, "soak") and summary.
func RunSoak(ctx context.Context, o SoakOptions) (*Report, *SoakSummary, error) {
	if o.Duration <= 0 {
		o.Duration = 10 * time.Minute
	}
	if o.Settle <= 0 {
		o.Settle = 4 * time.Minute
	}
	if o.Rate <= 0 {
		o.Rate = 200
	}
	if o.Accounts <= 0 {
		o.Accounts = 200
	}
	if o.Dispatchers <= 0 {
		o.Dispatchers = 2
	}
	if o.Partitions <= 0 {
		o.Partitions = 8
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	const groups = 2
	sum := &SoakSummary{Key: o.Key, DurationSec: o.Duration.Seconds(), RatePerSec: o.Rate}
	fmt.Fprintf(o.Log, "soak: key %d, %s of flood and chaos at %.0f events/s, then up to %s to settle\n", o.Key, o.Duration, o.Rate, o.Settle)

	plan, kinds, group := SoakPlan(o.Accounts, groups)
	farm, err := NewFarm(12 + 2*groups)
	if err != nil {
		return nil, nil, err
	}
	defer farm.Close()
	farm.Add(plan)

	const consumerGroup = "geckohook-dispatchers"
	const topic = "geckohook.events"
	roles := []string{"api", "coordinator"}
	for range o.Dispatchers {
		roles = append(roles, "dispatcher")
	}
	stack, err := StartStack(ctx, StackOptions{
		Dir: filepath.Join(o.Out, "soak"), Geckohook: o.Geckohook, RedisBin: o.RedisBin,
		Partitions: o.Partitions, Topic: topic, Group: consumerGroup, Roles: roles, AppendFsync: "always",
		// Short limits so retries, leases and rebalances all happen within
		// the run; three retries (the third at least 62 s after the first
		// attempt) so the outage group dies within it; a dead set large
		// enough that nothing is trimmed.
		Args: []string{"--request-timeout", "2s", "--retry-lease", "5s", "--max-retries", "3",
			"--dead-max", "1000000", "--workers", "256", "--max-conns-per-host", "32"},
	})
	if err != nil {
		return nil, nil, err
	}
	defer stack.Stop()
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{stack.RedisAddr}})
	defer rdb.Close()
	store := shard.NewStore(rdb, contract.DefaultRedisPrefix)

	if err := Register(ctx, stack.API, stack.AdminToken, plan, 16, nil); err != nil {
		return nil, nil, err
	}
	farm.SetSecrets(plan)
	hookOf := make(map[string]int, len(plan.Hooks))
	for i, h := range plan.Hooks {
		hookOf[h.ID] = i
	}
	if err := stack.WaitShards(ctx, consumerGroup, o.Partitions, 60*time.Second); err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(o.Log, "soak: %d webhooks of %d accounts registered; %d dispatchers hold the %d partitions\n",
		len(plan.Hooks), o.Accounts, o.Dispatchers, o.Partitions)

	faults := ChaosSchedule(ChaosOptions{Key: o.Key, Duration: o.Duration, Dispatchers: o.Dispatchers, Groups: groups})
	maxEvents := int(o.Rate*o.Duration.Seconds()) + 1000
	l := NewLedger(plan, maxEvents)
	farm.Use(l)
	smp := newSampler(stack.Procs())
	gen := NewGenerator(stack.Brokers, topic, plan, l)
	defer gen.Close()
	mon := (&suite{o: SuiteOptions{Log: o.Log}}).monitor(ctx, "soak", store, smp, l, time.Now(), monitorProbes{})
	t0 := time.Now()
	ch := &chaos{stack: stack, farm: farm, smp: smp, plan: plan, kinds: kinds, group: group, log: o.Log, t0: t0,
		counts: map[FaultKind]int{}, killed: map[*Proc]bool{}, gone: map[int]time.Time{}, finished: make(chan struct{})}
	var wg sync.WaitGroup
	chaosCtx, stopChaos := context.WithCancel(ctx)
	defer stopChaos()
	wg.Go(func() { ch.run(chaosCtx, Timeline(faults)) })
	produced, genErr := gen.Run(ctx, Flood{Count: maxEvents, Rate: o.Rate, Duration: o.Duration}, nil)
	// Each process is back before the flood ends: the chaos ends with the
	// steps left, restarts and the extra dispatcher's stop.
	ch.finish()
	wg.Wait()
	stopChaos()
	floodEnd := time.Now()
	if genErr != nil {
		mon.stop()
		return nil, nil, fmt.Errorf("the flood stopped after %d events: %w", produced, genErr)
	}
	fmt.Fprintf(o.Log, "soak: flood over, %d events; chaos stopped; settling\n", produced)

	deleted := func(existing map[string]bool) func(int) (bool, time.Time) {
		return func(h int) (bool, time.Time) {
			if existing == nil || existing[plan.Hooks[h].ID] {
				return false, time.Time{}
			}
			if kinds[h] != EndpointGone {
				return true, time.Time{}
			}
			return true, ch.goneFrom(group[h])
		}
	}
	var acc SoakAccount
	var settleErr error
	for {
		ch.supervise(ctx)
		existing, err := Existing(stack.API, plan)
		var snap QueueSnapshot
		if err == nil {
			snap, err = ReadQueues(ctx, rdb, store, hookOf)
		}
		if err == nil {
			acc = AccountSoak(l, snap, deleted(existing))
			if acc.Missing == 0 && acc.Pending == 0 && acc.Stale == 0 {
				settleErr = nil
				break
			}
		}
		settleErr = err
		if time.Since(floodEnd) > o.Settle || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	mon.stop()
	sum.SettledSec = time.Since(floodEnd).Seconds()
	sum.Faults, sum.UnexpectedExits, sum.Errors = ch.result()
	sum.Account = acc
	sum.Failures = acc.Failures()
	if settleErr != nil {
		sum.Failures = append(sum.Failures, "cannot settle: "+settleErr.Error())
	}
	if acc.Expected == 0 {
		sum.Failures = append(sum.Failures, "no pair was produced")
	}
	sum.Passed = len(sum.Failures) == 0

	row := Scenario{Name: "soak", Variant: fmt.Sprintf("key %d, %s", o.Key, o.Duration), Partitions: o.Partitions,
		Dispatchers: o.Dispatchers, Webhooks: len(plan.Hooks), Events: int64(produced), Deliveries: acc.Delivered,
		OfferedPerSec: o.Rate, DurationSec: time.Since(t0).Seconds(), Missing: acc.Missing + acc.Pending,
		Duplicates: acc.Duplicates, BadSignatures: acc.BadSignatures, Deleted: acc.Deleted, Queued: acc.Pending,
		IDMismatches: acc.IDMismatches, Unexpected: acc.Unexpected, PeakRetryDepth: mon.peakDepth, PeakRSSBytes: mon.peakRSS,
		Roles: smp.roleUsage(time.Since(t0)), Series: mon.points(l.Series()), Passed: sum.Passed, Failures: sum.Failures}
	if w := time.Since(t0).Seconds(); w > 0 {
		row.DeliveriesPerSec = float64(acc.Delivered) / w
	}
	q := l.Latency()
	row.P50Ms, row.P95Ms, row.P99Ms, row.MaxMs = ms(q.P50), ms(q.P95), ms(q.P99), ms(q.Max)
	row.LatencyNote = "produce→first 2xx over the whole soak, retries after faults included"
	row.Notes = append(row.Notes, SoakLine(sum), fmt.Sprintf("settled %.0f s after the flood", sum.SettledSec))
	row.Notes = append(row.Notes, sum.Errors...)
	rep := &Report{Started: t0.UTC(), Host: CurrentHost(), Scenarios: []Scenario{row}, Soak: sum}
	return rep, sum, nil
}

// SoakLine is the one-line summary of a soak.
func SoakLine(s *SoakSummary) string {
	a := &s.Account
	var fk []string
	for _, k := range FaultKinds {
		fk = append(fk, fmt.Sprintf("%s %d", k, s.Faults[k]))
	}
	result := "PASS"
	if !s.Passed {
		result = "FAIL"
	}
	return fmt.Sprintf("soak %s: key %d, %d pairs: %d delivered, %d dead, %d deleted (410), %d missing, %d pending, %d stale, %d duplicates (%d id mismatches); faults: %s; %d unexpected exits",
		result, s.Key, a.Expected, a.Delivered, a.Dead, a.Deleted, a.Missing, a.Pending, a.Stale, a.Duplicates, a.IDMismatches,
		strings.Join(fk, ", "), s.UnexpectedExits)
}

// chaos carries out a soak's timeline against the stack and the farm.
type chaos struct {
	stack *Stack
	farm  *Farm
	smp   *sampler
	plan  *Plan
	kinds []FaultKind
	group []int
	log   io.Writer
	t0    time.Time

	mu       sync.Mutex
	counts   map[FaultKind]int
	errs     []string
	exits    int
	killed   map[*Proc]bool    // killed on purpose, not yet restarted
	extra    *Proc             // the rebalance's extra dispatcher, while it runs
	gone     map[int]time.Time // endpoint-410 group -> when it began
	finished chan struct{}     // closed by finish
	once     sync.Once
}

// run does each step at its time; after finish it does the remaining
// restarts and stops at once and returns.
func (c *chaos) run(ctx context.Context, as []Action) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i, a := range as {
		for wait := time.Until(c.t0.Add(a.At)); wait > 0; wait = time.Until(c.t0.Add(a.At)) {
			select {
			case <-ctx.Done():
				return
			case <-c.finished:
				c.cleanUp(ctx, as[i:])
				return
			case <-tick.C:
				c.supervise(ctx)
			case <-time.After(wait):
			}
		}
		c.do(ctx, a)
	}
	select {
	case <-ctx.Done():
	case <-c.finished:
	}
}

// finish ends the chaos: steps still to come that bring processes back or
// endpoints to normal are done at once; new faults are not.
func (c *chaos) finish() { c.once.Do(func() { close(c.finished) }) }

func (c *chaos) cleanUp(ctx context.Context, as []Action) {
	for _, a := range as {
		switch a.Act {
		case ActRestart, ActExtraDown, ActEndpointOff:
			c.do(ctx, a)
		}
	}
	c.supervise(ctx)
}

func (c *chaos) logf(format string, args ...any) {
	fmt.Fprintf(c.log, "soak: %5.1fs chaos: %s\n", time.Since(c.t0).Seconds(), fmt.Sprintf(format, args...))
}

func (c *chaos) fail(err error) {
	c.logf("%v", err)
	c.mu.Lock()
	c.errs = append(c.errs, fmt.Sprintf("%.0fs: %v", time.Since(c.t0).Seconds(), err))
	c.mu.Unlock()
}

// procIndex is the index in the stack of the process a fault targets.
func (c *chaos) procIndex(f Fault) int {
	want, n := "dispatcher", f.Target
	switch f.Kind {
	case KillAPI:
		want, n = "api", 0
	case KillCoordinator:
		want, n = "coordinator", 0
	}
	for i, r := range c.stack.Roles {
		if r == want {
			if n == 0 {
				return i
			}
			n--
		}
	}
	return -1
}

func (c *chaos) do(ctx context.Context, a Action) {
	f := a.Fault
	switch a.Act {
	case ActKill:
		i := c.procIndex(f)
		if i < 0 {
			return
		}
		p := c.stack.Geckohook[i]
		c.mu.Lock()
		c.killed[p] = true
		c.counts[f.Kind]++
		c.mu.Unlock()
		p.Kill()
		c.logf("%s: killed %s (pid %d) for %s", f.Kind, c.stack.Roles[i], p.Pid(), f.For.Round(100*time.Millisecond))
	case ActRestart:
		c.restart(ctx, c.procIndex(f), false)
	case ActRedis:
		c.mu.Lock()
		c.counts[f.Kind]++
		c.mu.Unlock()
		start := time.Now()
		if err := c.stack.RestartRedis(ctx); err != nil {
			c.fail(err)
			return
		}
		c.logf("%s: redis-server killed and back from its AOF in %s", f.Kind, time.Since(start).Round(time.Millisecond))
	case ActExtraUp:
		p, _, err := c.stack.StartGeckohook(ctx, "dispatcher", false)
		if err != nil {
			c.fail(fmt.Errorf("rebalance: cannot start the extra dispatcher: %w", err))
			return
		}
		c.mu.Lock()
		c.extra = p
		c.counts[f.Kind]++
		c.mu.Unlock()
		c.smp.add(p)
		c.logf("%s: extra dispatcher (pid %d) joined for %s", f.Kind, p.Pid(), f.For.Round(100*time.Millisecond))
	case ActExtraDown:
		c.mu.Lock()
		p := c.extra
		c.extra = nil
		c.mu.Unlock()
		if p != nil {
			p.Stop(30 * time.Second)
			c.logf("%s: extra dispatcher stopped", f.Kind)
		}
	case ActEndpointOn:
		now := time.Now()
		b := EndpointBehaviour{}
		switch f.Kind {
		case EndpointFail, EndpointOutage:
			b.FailUntil = now.Add(f.For)
		case EndpointHang:
			b.Hang = true
		case EndpointDrop:
			b.Reset = true
		case EndpointGone:
			b.GoneFrom = now
			c.mu.Lock()
			c.gone[f.Target] = now
			c.mu.Unlock()
		}
		n := c.setGroup(f, b)
		c.mu.Lock()
		c.counts[f.Kind]++
		c.mu.Unlock()
		c.logf("%s: group %d (%d endpoints) for %s", f.Kind, f.Target, n, f.For.Round(100*time.Millisecond))
	case ActEndpointOff:
		c.setGroup(f, EndpointBehaviour{})
		c.logf("%s: group %d answers normally again", f.Kind, f.Target)
	}
}

func (c *chaos) setGroup(f Fault, b EndpointBehaviour) int {
	n := 0
	for h := range c.plan.Hooks {
		if c.kinds[h] == f.Kind && c.group[h] == f.Target {
			c.farm.SetBehaviour(h, b)
			n++
		}
	}
	return n
}

// restart starts geckohook process i again; crashed says it ended on its own.
func (c *chaos) restart(ctx context.Context, i int, crashed bool) {
	if i < 0 {
		return
	}
	old := c.stack.Geckohook[i]
	c.mu.Lock()
	if !crashed && !c.killed[old] {
		c.mu.Unlock()
		return // its kill never came: the flood ended first
	}
	delete(c.killed, old)
	if crashed {
		c.exits++
	}
	c.mu.Unlock()
	p, err := old.Again()
	if err != nil {
		c.fail(err)
		return
	}
	c.stack.Geckohook[i] = p
	c.smp.add(p)
	start := time.Now()
	if err := c.stack.WaitHealthy(ctx, p, c.stack.Metrics[i], 60*time.Second); err != nil {
		c.fail(fmt.Errorf("%s did not come back: %w", c.stack.Roles[i], err))
		return
	}
	c.logf("%s (pid %d) back, healthy after %s", c.stack.Roles[i], p.Pid(), time.Since(start).Round(time.Millisecond))
}

// supervise restarts geckohook processes that ended on their own: an exit
// is a finding, counted and logged, and the soak goes on.
func (c *chaos) supervise(ctx context.Context) {
	for i, p := range c.stack.Geckohook {
		c.mu.Lock()
		killed := c.killed[p]
		c.mu.Unlock()
		if done, err := p.Exited(); done && !killed {
			c.logf("%s (pid %d) exited on its own (%v); restarting it", c.stack.Roles[i], p.Pid(), err)
			c.fail(fmt.Errorf("%s exited on its own: %v", c.stack.Roles[i], err))
			c.restart(ctx, i, true)
		}
	}
	if c.stack.Redis != nil {
		if done, err := c.stack.Redis.Exited(); done {
			c.fail(fmt.Errorf("redis-server exited on its own: %v", err))
			if err := c.stack.RestartRedis(ctx); err != nil {
				c.fail(err)
			}
		}
	}
}

// goneFrom is when endpoint-410 group g began answering 410 (zero: not yet).
func (c *chaos) goneFrom(g int) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gone[g]
}

func (c *chaos) result() (map[FaultKind]int, int, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[FaultKind]int{}
	for k, v := range c.counts {
		m[k] = v
	}
	sort.Strings(c.errs)
	return m, c.exits, append([]string(nil), c.errs...)
}
