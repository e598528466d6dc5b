package loadtest

// This file owns how the suite's cost figures are computed from what a run
// observed: Redis memory per queued delivery, the drain rate, CPU per
// delivery, and the reading of Redis's INFO memory they come from.

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

// DrainSample is one reading of the retry queues, taken once a second.
type DrainSample struct {
	At        time.Time
	Depth     int64         // deliveries in the retry queues, scheduled and dead
	Backlog   int64         // of them, due by At and not yet taken
	CPU       time.Duration // geckohook's CPU time so far (0: not measured)
	RedisCPU  time.Duration // redis-server's CPU time so far (0: not measured)
	Wait      time.Duration // how long geckohook's threads waited for a CPU so far
	Delivered int64         // pairs delivered so far, from the retry queues or not
	Expected  int64         // pairs of the events produced so far
}

// Drain is what a drain's samples say of geckohook's catch-up.
type Drain struct {
	// PerSec is the queues' fall per second over the seconds that began
	// with deliveries overdue (due a second or more before and not yet
	// claimed: geckohook, not the retry schedule, set the pace), and
	// BacklogSec how long those seconds lasted together; Cores is
	// geckohook's CPU over them, in cores (0: not measured), and
	// DeliveredPerSec the pairs it delivered per second in them.
	PerSec          float64
	BacklogSec      float64
	Cores           float64
	DeliveredPerSec float64
	// RedisCores is redis-server's CPU over those seconds, in cores (0:
	// not measured): the retry scripts run there, on the same cores.
	RedisCores  float64
	PeakBacklog int64
	// Waiting is how many of geckohook's threads waited, runnable, for a
	// CPU on average over those seconds: a drain that was starved of CPU
	// by other processes says little of geckohook.
	Waiting float64
	// Sec is the span from the first sample to the first later one that
	// saw the queues empty (Emptied), or to the last sample.
	Sec     float64
	Emptied bool
}

// DrainOf reads consecutive samples, taken about once a second: from each
// to the next, the deliveries out of the queues are the depth's fall (new
// entries hide as many, so it is never more than the truth).
func DrainOf(samples []DrainSample) Drain {
	var d Drain
	if len(samples) < 2 {
		return d
	}
	var out, delivered int64
	var span, cpu, wait, redisCPU time.Duration
	end := samples[len(samples)-1]
	for i, a := range samples {
		d.PeakBacklog = max(d.PeakBacklog, a.Backlog)
		if i > 0 && a.Depth == 0 {
			end, d.Emptied = a, true
			break
		}
		if i+1 == len(samples) {
			break
		}
		b := samples[i+1]
		if dt := b.At.Sub(a.At); dt > 0 && a.Backlog > 0 {
			out, span, cpu, wait = out+max(a.Depth-b.Depth, 0), span+dt, cpu+b.CPU-a.CPU, wait+b.Wait-a.Wait
			if a.RedisCPU > 0 && b.RedisCPU > 0 {
				redisCPU += b.RedisCPU - a.RedisCPU
			}
			delivered += b.Delivered - a.Delivered
		}
	}
	if s := end.At.Sub(samples[0].At); s > 0 {
		d.Sec = s.Seconds()
	}
	if span > 0 {
		d.PerSec, d.BacklogSec = float64(out)/span.Seconds(), span.Seconds()
		d.Cores, d.DeliveredPerSec, d.Waiting = cores(cpu, span), float64(delivered)/span.Seconds(), cores(wait, span)
		d.RedisCores = cores(redisCPU, span)
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

// probes are the monitor's readers for a stack: Redis's data memory when
// Redis is one server, with that memory now (before the flood) as the
// baseline.
func (s *suite) probes(ctx context.Context, stack *Stack, rdb redis.UniversalClient) (monitorProbes, int64) {
	var pr monitorProbes
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
