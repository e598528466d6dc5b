package loadtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
)

// Plan.PairCounter agrees with counting pair by pair, whole and filtered,
// and MeanFanout with the plan's shape.
func TestPlanPairs(t *testing.T) {
	p := fanouts(47, 3, 4)
	odd := func(h *PlanHook) bool { return h.Pos%2 == 1 }
	for _, n := range []int{0, 1, 5, 9, 10, 11, 23, 100} {
		var all, kept int64
		for e := 0; e < n; e++ {
			for _, hi := range p.Accounts[p.EventAccount(e)] {
				all++
				if odd(&p.Hooks[hi]) {
					kept++
				}
			}
		}
		if got := p.PairCounter(nil)(n); got != all {
			t.Errorf("pairs of %d events = %d, want %d", n, got, all)
		}
		if got := p.PairCounter(odd)(n); got != kept {
			t.Errorf("odd pairs of %d events = %d, want %d", n, got, kept)
		}
	}
	if len(p.Hooks) != 47 || len(p.Accounts[0]) != 1 || len(p.Accounts[8]) != 9 || len(p.Accounts[9]) != 2 {
		t.Fatalf("fanouts: %d hooks, accounts of %d, %d and %d", len(p.Hooks), len(p.Accounts[0]), len(p.Accounts[8]), len(p.Accounts[9]))
	}
	if got := p.MeanFanout(); got != 4.7 {
		t.Fatalf("mean fanout %v, want 47 hooks / 10 accounts", got)
	}
}

// The generator writes events geckohook accepts, and the ceiling sends
// exactly the body geckohook builds from them.
func TestGeneratorEventsAndCeilingBodies(t *testing.T) {
	p := singles(7, 2, 3, nil)
	g := &Generator{Plan: p, stamp: 1_800_000_000}
	cat := catalog.Default()
	for _, e := range []int{0, 6, 7, 123456} {
		value := g.appendEvent(nil, e)
		ev, err := contract.DecodeEvent(value, []byte(AccountName(p.EventAccount(e))), 0, cat)
		if err != nil {
			t.Fatalf("event %d %s: %v", e, value, err)
		}
		if ev.AccountID != AccountName(e%7) {
			t.Fatalf("event %d is for account %q", e, ev.AccountID)
		}
		want := contract.AppendBody(nil, &ev, "https://api.tradegecko.com", cat)
		if got := ceilingBody(nil, cat, p.Event, e, 1_800_000_000); !bytes.Equal(got, want) {
			t.Fatalf("ceiling body\n%s\ngeckohook body\n%s", got, want)
		}
		if got := scanObjectID(want); got != e {
			t.Fatalf("the farm reads object_id %d from %s", got, want)
		}
	}
}

// ReadUsage sees this process's CPU time grow and its memory.
func TestReadUsage(t *testing.T) {
	before, err := ReadUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn until the kernel has counted 60 ms of this process's CPU (by
	// getrusage, not the /proc reading under test), however busy the
	// machine is; at most 30 s.
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	sum := sha256.Sum256(nil)
	for start, from := time.Now(), cpu(); cpu()-from < 60*time.Millisecond && time.Since(start) < 30*time.Second; {
		for range 1000 {
			sum = sha256.Sum256(sum[:])
		}
	}
	after, err := ReadUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after.CPU-before.CPU < 50*time.Millisecond || after.RSS < 1<<20 {
		t.Fatalf("usage before %+v after %+v: want 50 ms of CPU more and some memory", before, after)
	}
	if _, err := ReadUsage(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

// ReadRunWait reads this process's threads' run-queue wait: it never
// falls between two readings, and a process that does not exist is an
// error.
func TestReadRunWait(t *testing.T) {
	a, err := ReadRunWait(os.Getpid())
	if err != nil {
		t.Skipf("no schedstat here: %v", err)
	}
	runtime.Gosched()
	b, err := ReadRunWait(os.Getpid())
	if err != nil || b < a {
		t.Fatalf("run wait %v then %v, %v", a, b, err)
	}
	if _, err := ReadRunWait(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

// A span's CPU and run-queue wait are read off the samples around its
// ends, interpolated.
func TestMonitorUsageOver(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(s int, cpu, wait time.Duration) sample {
		return sample{DrainSample: DrainSample{At: t0.Add(time.Duration(s) * time.Second), CPU: cpu, Wait: wait}}
	}
	// Started at t0 with nothing used; sampled at 1 s and 2 s.
	m := &monitor{cpuMeasured: true, at0: t0, secs: []sample{at(1, time.Second, 2*time.Second), at(2, 1500*time.Millisecond, 2*time.Second)}}
	busy, waiting, ok := m.usageOver(t0.Add(500*time.Millisecond), t0.Add(1500*time.Millisecond))
	if !ok || math.Abs(busy-0.75) > 1e-9 || math.Abs(waiting-1) > 1e-9 {
		t.Fatalf("usage %v busy, %v waiting, %v; want 0.75 and 1", busy, waiting, ok)
	}
	if _, _, ok := m.usageOver(t0, t0.Add(3*time.Second)); ok {
		t.Fatal("a span past the samples was read")
	}
}

// The monitor's points put each second's deliveries and samples together.
func TestMonitorPoints(t *testing.T) {
	m := &monitor{secs: []sample{{DrainSample: DrainSample{Depth: 5}, rss: 100, cores: 0.5}, {DrainSample: DrainSample{Depth: 7}, rss: 200, cores: 1.5}}}
	pts := m.points([]Second{{At: 0, Delivered: 10, P50: time.Millisecond}, {At: 2, Delivered: 30, P99: 3 * time.Millisecond}})
	if len(pts) != 3 || pts[0].DeliveredPerSec != 10 || pts[0].P50Ms != 1 || pts[1].RetryDepth != 7 ||
		pts[1].CPUCores != 1.5 || pts[2].DeliveredPerSec != 30 || pts[2].P99Ms != 3 || pts[2].T != 3 ||
		pts[2].RetryDepth != 7 || pts[2].RSSBytes != 200 || pts[2].CPUCores != 0 {
		t.Fatalf("points %+v", pts)
	}
}

func TestUnknownScenario(t *testing.T) {
	_, err := RunSuite(t.Context(), SuiteOptions{Scenarios: []string{"healthy", "nope"}})
	if err == nil || !strings.Contains(err.Error(), `unknown scenario "nope"`) {
		t.Fatalf("err %v", err)
	}
}

// A stack refuses a directory that holds an earlier run's Redis data,
// which redis-server would load into this run.
func TestStackRefusesAnEarlierRunsDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "appendonlydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := StartStack(context.Background(), StackOptions{Dir: dir, Geckohook: "/nonexistent/geckohook"})
	if err == nil || !strings.Contains(err.Error(), "earlier run") {
		t.Fatalf("StartStack in a used directory: %v, want a refusal", err)
	}
}
