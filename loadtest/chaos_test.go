package loadtest

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// A key gives one schedule, always; its faults keep to the rules that let
// a soak settle: endpoint windows inside the first EndpointShare of the
// flood and short enough for three retries, process faults none in the
// last 10 s and every process back by then, a dispatcher never killed while
// down, one extra dispatcher at a time.
func TestChaosScheduleFromKey(t *testing.T) {
	f := func(key uint64, d time.Duration) {
		t.Helper()
		o := ChaosOptions{Key: key, Duration: d, Dispatchers: 2}
		fs := ChaosSchedule(o)
		if again := ChaosSchedule(o); !reflect.DeepEqual(fs, again) {
			t.Fatalf("key %d: two schedules differ", key)
		}
		if other := ChaosSchedule(ChaosOptions{Key: key + 1, Duration: d, Dispatchers: 2}); reflect.DeepEqual(fs, other) {
			t.Fatalf("keys %d and %d give one schedule", key, key+1)
		}
		counts := CountFaults(fs)
		for _, k := range FaultKinds {
			if k == KillAPI || k == KillCoordinator {
				continue // rarer: a short run may have none
			}
			if d >= 10*time.Minute && counts[k] == 0 {
				t.Errorf("key %d, %s: no %s fault", key, d, k)
			}
		}
		span := time.Duration(float64(d) * EndpointShare)
		down := map[int]time.Duration{}
		var extraUntil time.Duration
		for i, x := range fs {
			if i > 0 && x.At < fs[i-1].At {
				t.Fatalf("key %d: faults out of order at %d", key, i)
			}
			switch x.Kind {
			case EndpointFail, EndpointHang, EndpointDrop:
				limit := maxFailWindow
				if x.Kind != EndpointFail {
					limit = maxHangWindow
				}
				if x.At < 0 || x.At+x.For > span || x.For <= 0 || x.For > limit {
					t.Errorf("key %d: %s window %s+%s outside %s or longer than %s", key, x.Kind, x.At, x.For, span, limit)
				}
			case EndpointOutage:
				if want := min(max(span, OutageAtLeast), d+30*time.Second); x.At != 0 || x.For != want {
					t.Errorf("key %d: outage %s+%s, want 0+%s", key, x.At, x.For, want)
				}
			case EndpointGone:
				if x.At < d/5 || x.At > d/2 || x.For != 0 {
					t.Errorf("key %d: 410 from %s for %s", key, x.At, x.For)
				}
			default:
				if x.At+x.For > d-processQuiet {
					t.Errorf("key %d: %s at %s for %s ends inside the last %s", key, x.Kind, x.At, x.For, processQuiet)
				}
			}
			switch x.Kind {
			case KillDispatcher:
				if x.Target < 0 || x.Target >= 2 || down[x.Target] > x.At {
					t.Errorf("key %d: dispatcher %d killed at %s while down until %s", key, x.Target, x.At, down[x.Target])
				}
				down[x.Target] = x.At + x.For
			case Rebalance:
				if extraUntil > x.At {
					t.Errorf("key %d: a second extra dispatcher at %s", key, x.At)
				}
				extraUntil = x.At + x.For
			}
		}
		// Every kill is followed by its restart, every window that needs
		// one by its end.
		as := Timeline(fs)
		open := map[Fault]bool{}
		for i, a := range as {
			if i > 0 && a.At < as[i-1].At {
				t.Fatalf("key %d: actions out of order at %d", key, i)
			}
			switch a.Act {
			case ActKill, ActExtraUp:
				open[a.Fault] = true
			case ActEndpointOn:
				if a.Fault.Kind == EndpointHang || a.Fault.Kind == EndpointDrop {
					open[a.Fault] = true
				}
			case ActRestart, ActExtraDown, ActEndpointOff:
				if !open[a.Fault] {
					t.Fatalf("key %d: %v of %+v before its start", key, a.Act, a.Fault)
				}
				delete(open, a.Fault)
			}
		}
		if len(open) > 0 {
			t.Fatalf("key %d: %d faults never undone", key, len(open))
		}
	}
	for key := uint64(1); key <= 50; key++ {
		f(key, 2*time.Minute)
		f(key, 10*time.Minute)
	}
	f(7, 45*time.Second)
}

// The soak plan puts each fault group on the hooks the layout says, hangs
// and drops on farm servers of their own.
func TestSoakPlanLayout(t *testing.T) {
	p, kinds, group := SoakPlan(200, 2)
	if len(p.Hooks) != 400 || len(kinds) != 400 || len(group) != 400 {
		t.Fatalf("%d hooks, %d kinds, %d groups", len(p.Hooks), len(kinds), len(group))
	}
	count := map[FaultKind]int{}
	servers := map[FaultKind]map[int]bool{}
	for h, k := range kinds {
		count[k]++
		if servers[k] == nil {
			servers[k] = map[int]bool{}
		}
		servers[k][p.Hooks[h].Server] = true
	}
	want := map[FaultKind]int{"": 300, EndpointFail: 40, EndpointHang: 20, EndpointDrop: 20, EndpointGone: 10, EndpointOutage: 10}
	if !reflect.DeepEqual(count, want) {
		t.Fatalf("hooks by fault: %v, want %v", count, want)
	}
	for srv := range servers[""] {
		if servers[EndpointHang][srv] || servers[EndpointDrop][srv] {
			t.Fatalf("server %d serves healthy hooks and hanging or dropping ones", srv)
		}
	}
}

// AccountSoak settles each pair once: delivered (duplicates counted),
// dead, deleted, pending or missing; stale records, id mismatches and bad
// signatures are named.
func TestAccountSoak(t *testing.T) {
	p := smallPlan() // account 0: hook 0; 1: hooks 1-2; 2: hooks 3-5
	l := NewLedger(p, 9)
	at := time.Now()
	for e := range 6 { // 12 pairs
		l.Produced(e, at)
	}
	id := func(s string) []byte { return []byte(s) }
	l.Record(0, 0, id("a"), true, 500, at) // (0,0): failed, then delivered twice with its id
	l.Record(0, 0, id("a"), true, 200, at)
	l.Record(0, 0, id("a"), true, 200, at)
	l.Record(1, 1, id("b"), true, 200, at)  // (1,1): delivered, but still scheduled: stale
	l.Record(2, 1, id("c"), true, 500, at)  // (1,2): dead
	l.Record(3, 2, id("d"), true, 200, at)  // (2,3): delivered and dead: an answer geckohook missed
	l.Record(4, 2, id("e"), true, 410, at)  // (2,4): 410, webhook deleted
	l.Record(5, 2, id("f"), true, 500, at)  // (2,5): scheduled: pending
	l.Record(0, 3, id("g"), true, 200, at)  // (3,0): delivered
	l.Record(0, 3, id("h"), true, 200, at)  // ...again, with another id: a mismatch
	l.Record(1, 4, id("i"), false, 200, at) // (4,1): delivered, bad signature
	l.Record(2, 4, id("j"), true, 200, at)  // (4,2): delivered
	l.Record(3, 5, id("k"), true, 200, at)  // (5,3): delivered
	// (5,4): webhook deleted, never sent; (5,5): nothing anywhere: missing.
	q := QueueSnapshot{
		Scheduled: map[PairKey]int{{1, 1}: 1, {2, 5}: 1},
		Dead:      map[PairKey]int{{1, 2}: 1, {2, 3}: 1},
		Foreign:   1,
	}
	goneAt := at.Add(GoneSlack / 2) // hook 4 answered 410 from then on
	deleted := func(h int) (bool, time.Time) {
		if h == 4 {
			return true, goneAt
		}
		return false, time.Time{}
	}
	a := AccountSoak(l, q, deleted)
	a.MissingSamples, a.PendingSamples, a.StaleSamples = nil, nil, nil
	want := SoakAccount{Expected: 12, Delivered: 7, Dead: 1, Deleted: 2, Pending: 1, Missing: 1,
		Duplicates: 2, IDMismatches: 1, BadSignatures: 1, Stale: 1, DeadDelivered: 1, ForeignRecords: 1, DeletedHooks: 1}
	if !reflect.DeepEqual(a, want) {
		t.Fatalf("account\n got %+v\nwant %+v", a, want)
	}
	if a.Delivered+a.Dead+a.Deleted+a.Pending+a.Missing != a.Expected {
		t.Fatalf("settled pairs do not add up: %+v", a)
	}
	fs := AccountSoak(l, q, deleted).Failures()
	got := strings.Join(fs, "\n")
	for _, s := range []string{"1 pairs missing", "event 5 → hook 5", "1 pairs still scheduled", "event 2 → hook 5",
		"1 retry records scheduled for pairs already settled", "event 1 → hook 1", "1 re-sent requests", "1 requests with a bad signature"} {
		if !strings.Contains(got, s) {
			t.Errorf("failures do not say %q:\n%s", s, got)
		}
	}

	// Everything settled: no failure.
	clean := NewLedger(p, 9)
	clean.Produced(0, at)
	clean.Record(0, 0, id("z"), true, 200, at)
	if fs := AccountSoak(clean, QueueSnapshot{}, nil).Failures(); len(fs) != 0 {
		t.Fatalf("a settled ledger fails: %v", fs)
	}
}

// The summary line names the result, the key, every fault kind and the
// settled figures.
func TestSoakLine(t *testing.T) {
	s := &SoakSummary{Key: 42, Passed: true, Faults: map[FaultKind]int{RestartRedis: 3},
		Account: SoakAccount{Expected: 10, Delivered: 7, Dead: 2, Deleted: 1, Duplicates: 4}}
	line := SoakLine(s)
	for _, want := range []string{"soak PASS", "key 42", "10 pairs", "7 delivered", "2 dead", "1 deleted", "0 missing", "4 duplicates", "restart-redis 3", "kill-dispatcher 0"} {
		if !strings.Contains(line, want) {
			t.Errorf("summary %q does not say %q", line, want)
		}
	}
	if strings.Contains(line, "\n") {
		t.Fatalf("summary is not one line: %q", line)
	}
}

// An undelivered pair of a deleted webhook is deleted only if it was sent
// or its event came close to the 410s; older ones, and the pairs of a
// webhook deleted without a 410, are missing.
func TestAccountSoakDeletionMasksNoLoss(t *testing.T) {
	p := smallPlan() // account 0: hook 0 only
	l := NewLedger(p, 9)
	t0 := time.Now()
	l.Produced(0, t0)                          // sent, answered 410: deleted
	l.Produced(3, t0)                          // never sent, long before the 410s: missing
	l.Produced(6, t0.Add(3*GoneSlack))         // never sent, after the 410s began: deleted
	l.Record(0, 0, []byte("x"), true, 410, t0) //
	goneAt := t0.Add(2 * GoneSlack)
	a := AccountSoak(l, QueueSnapshot{}, func(h int) (bool, time.Time) { return h == 0, goneAt })
	if a.Deleted != 2 || a.Missing != 1 || !strings.Contains(strings.Join(a.MissingSamples, ""), "event 3 → hook 0") {
		t.Fatalf("deleted %d, missing %d (%v); want 2, 1 (event 3)", a.Deleted, a.Missing, a.MissingSamples)
	}
	a = AccountSoak(l, QueueSnapshot{}, func(h int) (bool, time.Time) { return h == 0, time.Time{} })
	if a.Deleted != 0 || a.Missing != 3 || a.UnaskedDeletions != 1 || len(a.Failures()) != 2 {
		t.Fatalf("a webhook deleted without a 410: deleted %d, missing %d, unasked %d, failures %v", a.Deleted, a.Missing, a.UnaskedDeletions, a.Failures())
	}
}
