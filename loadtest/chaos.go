package loadtest

// This file owns the soak's chaos as pure code: from one number (the key),
// when each fault strikes (processes killed and restarted, redis-server
// restarted, an extra dispatcher joining and leaving the consumer group,
// endpoint groups failing, hanging, dropping connections, answering 410),
// and the ordered actions that carry those faults out. soak.go does the I/O.

import (
	"math/rand/v2"
	"sort"
	"time"
)

// FaultKind names one kind of fault the soak injects.
type FaultKind string

// The kinds of fault.
const (
	KillDispatcher  FaultKind = "kill-dispatcher"  // SIGKILL one dispatcher, restart it after For
	KillAPI         FaultKind = "kill-api"         // SIGKILL the API process, restart it after For
	KillCoordinator FaultKind = "kill-coordinator" // SIGKILL the coordinator, restart it after For
	RestartRedis    FaultKind = "restart-redis"    // SIGKILL redis-server, start it again from its AOF
	Rebalance       FaultKind = "rebalance"        // an extra dispatcher joins, and leaves (SIGTERM) after For
	EndpointFail    FaultKind = "endpoint-5xx"     // a group of endpoints answers 500 for For
	EndpointHang    FaultKind = "endpoint-hang"    // a group never answers for For (past the request timeout)
	EndpointDrop    FaultKind = "endpoint-drop"    // a group resets every connection for For
	EndpointGone    FaultKind = "endpoint-410"     // a group answers 410 from At on: its webhooks are deleted
	EndpointOutage  FaultKind = "endpoint-outage"  // a group answers 500 for longer than the retries last: dead
)

// FaultKinds lists every kind, in the order the summary names them.
var FaultKinds = []FaultKind{KillDispatcher, KillAPI, KillCoordinator, RestartRedis, Rebalance,
	EndpointFail, EndpointHang, EndpointDrop, EndpointGone, EndpointOutage}

// Fault is one fault of a soak.
type Fault struct {
	At     time.Duration // since the flood started
	Kind   FaultKind
	Target int           // dispatcher index for KillDispatcher; endpoint group for endpoint kinds
	For    time.Duration // down time, extra dispatcher's stay, or endpoint window (0: for good)
}

// ChaosOptions shapes a soak's schedule of faults.
type ChaosOptions struct {
	Key      uint64
	Duration time.Duration // of the flood; process faults stop 10 s before its end
	// Dispatchers is how many dispatcher processes a KillDispatcher picks from.
	Dispatchers int
	// MeanGap is the mean time between process faults (default 20 s).
	MeanGap time.Duration
	// Groups is how many endpoint groups each endpoint kind has (default 2).
	Groups int
}

// Endpoint windows fit in the first EndpointShare of the flood and last at
// most maxFailWindow (maxHangWindow for hangs and drops): geckohook runs with
// --max-retries 3, whose third retry comes at least 62 s after the first
// attempt, so a pair caught by a window is delivered after it rather than
// dead, and every backlog drains well inside the settling time.
const (
	EndpointShare  = 0.6
	maxFailWindow  = 55 * time.Second
	maxHangWindow  = 40 * time.Second
	windowSlot     = 90 * time.Second // one window per group per slot
	processQuiet   = 10 * time.Second // no process fault in the flood's last seconds
	firstFaultWait = 5 * time.Second
	// OutageAtLeast is the shortest outage: long enough for its first
	// pairs to spend every retry and die.
	OutageAtLeast = 150 * time.Second
)

// ChaosSchedule returns the faults of a soak, ordered by At: the same
// options (key included) always give the same schedule.
func ChaosSchedule(o ChaosOptions) []Fault {
	if o.MeanGap <= 0 {
		o.MeanGap = 20 * time.Second
	}
	if o.Groups <= 0 {
		o.Groups = 2
	}
	o.Dispatchers = max(o.Dispatchers, 1)
	r := rand.New(rand.NewPCG(o.Key, o.Key^0x9e3779b97f4a7c15))
	between := func(lo, hi time.Duration) time.Duration {
		if hi <= lo {
			return lo
		}
		return lo + time.Duration(r.Int64N(int64(hi-lo)))
	}
	var fs []Fault

	// Endpoint windows: each group of a windowed kind misbehaves once per
	// slot of the endpoint share of the flood.
	span := time.Duration(float64(o.Duration) * EndpointShare)
	slots := max(int(span/windowSlot), 1)
	slot := span / time.Duration(slots)
	for _, k := range []FaultKind{EndpointFail, EndpointHang, EndpointDrop} {
		longest := maxFailWindow
		if k != EndpointFail {
			longest = maxHangWindow
		}
		for g := 0; g < o.Groups; g++ {
			for s := 0; s < slots; s++ {
				d := between(slot/4, min(slot*3/4, longest))
				start := time.Duration(s)*slot + between(0, slot-d)
				fs = append(fs, Fault{At: start, Kind: k, Target: g, For: d})
			}
		}
	}
	for g := 0; g < o.Groups; g++ {
		fs = append(fs, Fault{At: between(o.Duration/5, o.Duration/2), Kind: EndpointGone, Target: g})
	}
	// The outage outlasts the retries of its first pairs (the third retry
	// comes 62-122 s after the first attempt), so some die; it ends soon
	// enough after the flood that the last of them settle.
	fs = append(fs, Fault{At: 0, Kind: EndpointOutage, Target: 0, For: min(max(span, OutageAtLeast), o.Duration+30*time.Second)})

	// Process faults at random gaps; a dispatcher already down is not
	// killed again, and one extra dispatcher at most is in the group.
	weights := []struct {
		k FaultKind
		w int
	}{{KillDispatcher, 35}, {RestartRedis, 25}, {Rebalance, 20}, {KillAPI, 10}, {KillCoordinator, 10}}
	downUntil := make([]time.Duration, o.Dispatchers)
	var apiUntil, coordUntil, extraUntil time.Duration
	end := o.Duration - processQuiet
	for t := firstFaultWait + between(0, o.MeanGap); t < end; t += between(o.MeanGap/2, o.MeanGap*3/2) {
		n := r.IntN(100)
		var k FaultKind
		for _, w := range weights {
			if n < w.w {
				k = w.k
				break
			}
			n -= w.w
		}
		f := Fault{At: t, Kind: k}
		switch k {
		case KillDispatcher:
			f.Target = r.IntN(o.Dispatchers)
			if downUntil[f.Target] > t {
				continue
			}
			f.For = between(time.Second, 6*time.Second)
			downUntil[f.Target] = t + f.For
		case KillAPI, KillCoordinator:
			until := &apiUntil
			if k == KillCoordinator {
				until = &coordUntil
			}
			if *until > t {
				continue
			}
			f.For = between(time.Second, 4*time.Second)
			*until = t + f.For
		case Rebalance:
			if extraUntil > t {
				continue
			}
			f.For = min(between(10*time.Second, 30*time.Second), end-t)
			extraUntil = t + f.For
		}
		f.For = min(f.For, max(end-t, 0)) // every process is back before the flood ends
		fs = append(fs, f)
	}
	sort.SliceStable(fs, func(i, j int) bool { return fs[i].At < fs[j].At })
	return fs
}

// ActionKind is one step that carries a fault out.
type ActionKind uint8

// The steps.
const (
	ActKill        ActionKind = iota + 1 // SIGKILL a process (Fault.Kind says which)
	ActRestart                           // start the killed process again
	ActRedis                             // SIGKILL redis-server and start it again
	ActExtraUp                           // start the extra dispatcher
	ActExtraDown                         // stop the extra dispatcher (SIGTERM)
	ActEndpointOn                        // the endpoint group starts misbehaving
	ActEndpointOff                       // the endpoint group answers normally again
)

// Action is one step at its time.
type Action struct {
	At    time.Duration
	Act   ActionKind
	Fault Fault
}

// Timeline turns faults into the ordered steps that carry them out: a kill
// and its restart For later, an extra dispatcher's start and stop, an
// endpoint window's start and end (EndpointFail, EndpointOutage and
// EndpointGone end by themselves: the farm's FailUntil and GoneFrom).
func Timeline(fs []Fault) []Action {
	var as []Action
	for _, f := range fs {
		switch f.Kind {
		case KillDispatcher, KillAPI, KillCoordinator:
			as = append(as, Action{f.At, ActKill, f}, Action{f.At + f.For, ActRestart, f})
		case RestartRedis:
			as = append(as, Action{f.At, ActRedis, f})
		case Rebalance:
			as = append(as, Action{f.At, ActExtraUp, f}, Action{f.At + f.For, ActExtraDown, f})
		case EndpointHang, EndpointDrop:
			as = append(as, Action{f.At, ActEndpointOn, f}, Action{f.At + f.For, ActEndpointOff, f})
		default:
			as = append(as, Action{f.At, ActEndpointOn, f})
		}
	}
	// Stable: at one instant, a restart never goes before its kill.
	sort.SliceStable(as, func(i, j int) bool { return as[i].At < as[j].At })
	return as
}

// CountFaults counts faults by kind.
func CountFaults(fs []Fault) map[FaultKind]int {
	m := map[FaultKind]int{}
	for _, f := range fs {
		m[f.Kind]++
	}
	return m
}
