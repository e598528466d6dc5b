package loadtest

// This file owns how the suite's cost figures are computed from what a run
// observed: Redis memory per queued delivery, the drain rate, CPU per
// delivery, and the reading of Redis's INFO memory and geckohook's CPU
// they come from.

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// minQueuedForBytes is the smallest queue depth Redis memory per queued
// delivery is reported at: below it, allocator noise outweighs the queue.
const minQueuedForBytes = 1000

// BytesPerQueued is Redis memory per queued delivery: the growth of used
// (bytes, at a depth of queued deliveries) over baseline (the same reading
// before the flood, queues empty); 0 when fewer than minQueuedForBytes
// were queued.
func BytesPerQueued(used, baseline, queued int64) float64 {
	if queued < minQueuedForBytes {
		return 0
	}
	return float64(used-baseline) / float64(queued)
}

// DrainRate is deliveries/s out of the retry queues: drained deliveries
// between from (the failing hosts are back) and to (the queues are
// empty); 0 when the span is empty.
func DrainRate(drained int64, from, to time.Time) float64 {
	d := to.Sub(from)
	if d <= 0 || drained <= 0 {
		return 0
	}
	return float64(drained) / d.Seconds()
}

// DrainSample is one reading of the retry queues while they drain, taken
// once a second.
type DrainSample struct {
	At        time.Time
	Depth     int64         // deliveries in the retry queues, scheduled and dead
	Backlog   int64         // of them, due by At and not yet taken
	CPU       time.Duration // geckohook's CPU time so far (0: not measured)
	Delivered int64         // pairs delivered so far, from the retry queues or not
	Expected  int64         // pairs of the events produced so far (0: not read)
}

// kafkaSettled is how many pairs may be neither delivered nor in the retry
// queues (first attempts in flight, or events still in Kafka) for a
// second to count as one after the flood's Kafka backlog was delivered:
// well below a second's flood, well above a stray in-flight attempt.
const kafkaSettled = 1000

// kafkaSettled reports whether at most kafkaSettled produced pairs were
// neither delivered nor queued for a retry at s: the flood's backlog in
// Kafka was delivered. The count can fall below zero (a retry delivered
// and not yet removed from its queue counts twice). False when the
// produced pairs were not read.
func (s DrainSample) kafkaSettled() bool {
	return s.Expected > 0 && s.Expected-s.Delivered-s.Depth <= kafkaSettled
}

// Drain is what a drain's samples say of geckohook's catch-up capacity.
type Drain struct {
	// PerSec is deliveries out of the queues per second over the seconds
	// that began with a backlog: deliveries were due and waiting, so
	// geckohook, not the retry schedule, set the pace. With no such
	// second it is the best second's rate (LowerBound).
	PerSec     float64
	LowerBound bool
	// BacklogSec is how long the seconds that began with a backlog
	// lasted together, PeakBacklog the largest backlog sampled.
	BacklogSec  float64
	PeakBacklog int64
	// Cores is geckohook's CPU over the seconds PerSec was taken from,
	// in cores; 0 when the CPU was not measured. DeliveredPerSec is the
	// pairs delivered per second over the same seconds, from the queues
	// or from Kafka's backlog: all the work that CPU did.
	Cores           float64
	DeliveredPerSec float64
	// FreePerSec is PerSec over the seconds that began with a backlog and
	// with the flood's Kafka backlog delivered (FreeSec of them): the
	// drain when the retries had geckohook to themselves. In the others
	// the retries share geckohook, and their hosts, with the events the
	// flood left in Kafka. 0 when there was no such second.
	FreePerSec float64
	FreeSec    float64
}

// minDrainSecond is the shortest span between samples a best second is
// taken from: the last, cut short when the queues are seen empty, can be
// a few milliseconds.
const minDrainSecond = 500 * time.Millisecond

// DrainOf reads consecutive samples: from each to the next, the
// deliveries out of the queues are the depth's fall (new entries hide as
// many, so it is never more than the truth).
func DrainOf(samples []DrainSample) Drain {
	var d Drain
	var out, delivered, bestDelivered, freeOut int64
	var span, cpu, freeSpan time.Duration
	var best float64
	var bestCPU, bestSpan time.Duration
	for i := 0; i+1 < len(samples); i++ {
		a, b := samples[i], samples[i+1]
		d.PeakBacklog = max(d.PeakBacklog, a.Backlog)
		dt := b.At.Sub(a.At)
		if dt <= 0 {
			continue
		}
		fell := max(a.Depth-b.Depth, 0)
		if a.Backlog > 0 {
			out, span, cpu = out+fell, span+dt, cpu+b.CPU-a.CPU
			delivered += b.Delivered - a.Delivered
			if a.kafkaSettled() {
				freeOut, freeSpan = freeOut+fell, freeSpan+dt
			}
		}
		if r := float64(fell) / dt.Seconds(); dt >= minDrainSecond && r > best {
			best, bestCPU, bestSpan, bestDelivered = r, b.CPU-a.CPU, dt, b.Delivered-a.Delivered
		}
	}
	if n := len(samples); n > 0 {
		d.PeakBacklog = max(d.PeakBacklog, samples[n-1].Backlog)
	}
	if freeSpan > 0 {
		d.FreePerSec, d.FreeSec = float64(freeOut)/freeSpan.Seconds(), freeSpan.Seconds()
	}
	if span > 0 {
		d.PerSec, d.BacklogSec = float64(out)/span.Seconds(), span.Seconds()
		d.Cores, d.DeliveredPerSec = cores(cpu, span), float64(delivered)/span.Seconds()
		return d
	}
	d.PerSec, d.LowerBound, d.Cores = best, best > 0, cores(bestCPU, bestSpan)
	if bestSpan > 0 {
		d.DeliveredPerSec = float64(bestDelivered) / bestSpan.Seconds()
	}
	return d
}

// cores is cpu time over a span of wall time; 0 when either is not positive.
func cores(cpu, span time.Duration) float64 {
	if cpu <= 0 || span <= 0 {
		return 0
	}
	return cpu.Seconds() / span.Seconds()
}

// RateBetween is how many per second the count grew from n0 at t0 to n1 at
// t1; 0 when the span is empty.
func RateBetween(n0, n1 int64, t0, t1 time.Time) float64 {
	d := t1.Sub(t0)
	if d <= 0 {
		return 0
	}
	return float64(n1-n0) / d.Seconds()
}

// MicrosPer is cpu in microseconds per unit of n; 0 when n is 0.
func MicrosPer(cpu time.Duration, n int64) float64 {
	if n <= 0 || cpu <= 0 {
		return 0
	}
	return float64(cpu) / float64(time.Microsecond) / float64(n)
}

// RedisMemory reads the bytes Redis holds for data from an INFO memory
// answer: used_memory less the client buffers (mem_clients_normal) and the
// AOF buffer (mem_aof_buffer), which come and go with the traffic of the
// moment, not with what is stored.
func RedisMemory(info string) (int64, error) {
	var used, clients, aof int64
	found := false
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "used_memory":
			used, found = n, true
		case "mem_clients_normal":
			clients = n
		case "mem_aof_buffer":
			aof = n
		}
	}
	if !found {
		return 0, fmt.Errorf("INFO memory has no used_memory")
	}
	return used - clients - aof, nil
}

// redisMemoryOf asks one Redis for RedisMemory.
func redisMemoryOf(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, fmt.Errorf("cannot read Redis INFO memory: %w", err)
	}
	return RedisMemory(info)
}

// cpuOf returns a reader of the summed CPU time of procs so far (a process
// that ended keeps its last reading); nil when there are none.
func cpuOf(procs []*Proc) func() time.Duration {
	if len(procs) == 0 {
		return nil
	}
	last := make([]time.Duration, len(procs))
	return func() time.Duration {
		var sum time.Duration
		for i, p := range procs {
			if u, err := ReadUsage(p.Pid()); err == nil {
				last[i] = u.CPU
			}
			sum += last[i]
		}
		return sum
	}
}

// probes are the monitor's readers for a stack: geckohook's CPU when the
// suite started its processes, Redis's data memory when Redis is one
// server, with that memory now (before the flood) as the baseline.
func (s *suite) probes(ctx context.Context, stack *Stack, rdb redis.UniversalClient) (monitorProbes, int64) {
	pr := monitorProbes{cpu: cpuOf(stack.Geckohook)}
	if strings.Contains(stack.RedisAddr, ",") {
		return pr, 0 // a cluster: INFO answers for one node only
	}
	base, err := redisMemoryOf(ctx, rdb)
	if err != nil {
		fmt.Fprintf(s.o.Log, "Redis memory per queued delivery not measured: %v\n", err)
		return pr, 0
	}
	pr.mem = func() (int64, error) { return redisMemoryOf(ctx, rdb) }
	return pr, base
}

// The healthy scenario's targets.
const (
	targetCPURatio = 1.5 // geckohook's CPU per delivery over the ceiling client's per request, at most
	targetOwnP99Ms = 10  // geckohook's own p99 at half the sustained rate, at most
)

// healthyTargets checks the healthy scenario's measured figures.
func healthyTargets(row *Scenario) []Target {
	var ts []Target
	if row.CPURatio != 0 {
		ts = append(ts, CheckTarget("cpu_ratio", row.CPURatio, "<=", targetCPURatio))
	}
	if row.OwnP99Ms != 0 && row.OfferedPerSec != 0 { // the paced phase ran
		ts = append(ts, CheckTarget("own_p99_ms", row.OwnP99Ms, "<=", targetOwnP99Ms))
	}
	return ts
}
