package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
)

// Catching up. A coordinator that was down, or is slower than the
// dispatchers, reads a backlog of outcomes from the past. Two things must
// not run ahead of what is applied, or they act on a past that is not in
// Redis yet: the 3-day rule checked against the clock (a success in the
// backlog may still reset a streak) and the daily digest (a day's failures
// may still be in Kafka). Both go by the watermark below, which comes from
// the consumer group's lag, read from Kafka itself:
// per partition of the outcomes topic, the high watermark minus the group's
// committed offset (offsets are committed only after Redis has the batch).
//
//   - Caught up: every partition's lag is 0. Every outcome in Kafka when the
//     offsets were read is applied.
//   - The watermark (Keys.Watermark, unix ms, only ever moved forward): the
//     time up to which every outcome is applied. It is the clock reading
//     taken just before the offsets were read when caught up (an idle topic
//     counts as caught up, so the digest still goes out); otherwise the
//     lowest, over the partitions still behind, of the newest outcome time
//     applied from that partition (Keys.Applied; 0 when none is known), since
//     a partition is read in the order its outcomes were published.
//
// Outcomes reach Kafka a moment after their time (the publisher batches and
// retries its writes); readers of the watermark allow a grace for that
// (Options.Grace, the mail's --mail-grace: 2 minutes). The 3-day rule
// against the clock is judged at min(now, watermark) - grace, so it needs
// neither an idle topic nor every partition at zero lag.

// lagState is the group's lag at one moment.
type lagState struct {
	at     time.Time     // clock read before the offsets
	behind map[int]int64 // partitions with outcomes not applied yet → how many
}

func (l *lagState) caughtUp() bool { return l != nil && len(l.behind) == 0 }

// groupLag reads, per partition of the outcomes topic, how many outcomes
// the group has not committed yet (0 included). A topic that does not
// exist yet has no partitions.
func (c *Coordinator) groupLag(ctx context.Context) (map[int]int64, error) {
	md, err := c.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.o.Topic}})
	if err != nil {
		return nil, fmt.Errorf("cannot read outcomes topic metadata: %w", err)
	}
	var parts []int
	for _, t := range md.Topics {
		if t.Name != c.o.Topic {
			continue
		}
		if t.Error != nil {
			if errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
				return map[int]int64{}, nil
			}
			return nil, fmt.Errorf("cannot read outcomes topic metadata: %w", t.Error)
		}
		for _, p := range t.Partitions {
			parts = append(parts, p.ID)
		}
	}
	if len(parts) == 0 {
		return map[int]int64{}, nil
	}
	offsets := func(of func(int) kafka.OffsetRequest) (map[int]int64, error) {
		reqs := make([]kafka.OffsetRequest, len(parts))
		for i, p := range parts {
			reqs[i] = of(p)
		}
		res, err := c.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{c.o.Topic: reqs}})
		if err != nil {
			return nil, fmt.Errorf("cannot list outcomes topic offsets: %w", err)
		}
		out := make(map[int]int64, len(parts))
		for _, po := range res.Topics[c.o.Topic] {
			if po.Error != nil {
				return nil, fmt.Errorf("cannot list offsets of outcomes partition %d: %w", po.Partition, po.Error)
			}
			out[po.Partition] = max(po.FirstOffset, po.LastOffset)
		}
		if len(out) != len(parts) {
			return nil, fmt.Errorf("cannot list outcomes topic offsets: %d of %d partitions answered", len(out), len(parts))
		}
		return out, nil
	}
	first, err := offsets(kafka.FirstOffsetOf)
	if err != nil {
		return nil, err
	}
	last, err := offsets(kafka.LastOffsetOf)
	if err != nil {
		return nil, err
	}
	of, err := c.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: c.o.Group, Topics: map[string][]int{c.o.Topic: parts}})
	if err == nil && of.Error != nil {
		err = of.Error
	}
	committed := make(map[int]int64, len(parts))
	switch {
	case errors.Is(err, kafka.GroupIdNotFound):
		// A group that never committed: it starts at the first offsets.
		of = &kafka.OffsetFetchResponse{}
	case err != nil:
		return nil, fmt.Errorf("cannot read the committed offsets of group %s: %w", c.o.Group, err)
	}
	for _, p := range of.Topics[c.o.Topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("cannot read the committed offset of outcomes partition %d: %w", p.Partition, p.Error)
		}
		committed[p.Partition] = p.CommittedOffset
	}
	lag := make(map[int]int64, len(parts))
	for _, p := range parts {
		pos, ok := committed[p]
		if !ok || pos < 0 || pos < first[p] {
			pos = first[p] // nothing committed: the group starts at the first offset
		}
		lag[p] = max(last[p]-pos, 0)
	}
	return lag, nil
}

// advanceScript moves the watermark (KEYS[1]) forward only, to ARGV[1] but
// not past the oldest sweep in progress (KEYS[2]; holds whose real-time
// deadline, after the "|" of the member, is before ARGV[2] are dropped as
// left by a crashed coordinator), and returns it.
var advanceScript = redis.NewScript(`
local to = tonumber(ARGV[1])
local holds = redis.call('ZRANGE', KEYS[2], 0, 99, 'WITHSCORES')
for i = 1, #holds, 2 do
  local deadline = tonumber(string.match(holds[i], '|(%d+)$') or '0')
  if deadline < tonumber(ARGV[2]) then
    redis.call('ZREM', KEYS[2], holds[i])
  elseif tonumber(holds[i+1]) < to then
    to = tonumber(holds[i+1])
  end
end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if to > cur then redis.call('SET', KEYS[1], to); cur = to end
return cur`)

// appliedScript raises, per partition (ARGV pairs: partition, unix ms), the
// newest outcome time applied.
var appliedScript = redis.NewScript(`
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i+1]) > cur then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
end
return 1`)

// CheckLag reads the group's lag, keeps it for the sweep and the batches,
// and moves the watermark in Redis forward. It returns whether the group is
// caught up.
func (c *Coordinator) CheckLag(ctx context.Context) (bool, error) {
	st, err := c.checkLag(ctx)
	return st.caughtUp(), err
}

func (c *Coordinator) checkLag(ctx context.Context) (*lagState, error) {
	now := c.o.Now() // before the offsets: everything in Kafka by now is counted
	lag, err := c.groupLag(ctx)
	if err != nil {
		c.lag.Store(nil)
		c.showLag(nil)
		return nil, err
	}
	st := &lagState{at: now, behind: make(map[int]int64)}
	for p, n := range lag {
		if n > 0 {
			st.behind[p] = n
		}
	}
	c.lag.Store(st)
	c.showLag(lag)
	lag = st.behind
	wm := now.UnixMilli()
	if len(lag) > 0 {
		applied, err := c.o.Redis.HGetAll(ctx, c.keys.Applied()).Result()
		if err != nil {
			return nil, fmt.Errorf("cannot read the applied outcome times: %w", err)
		}
		for p := range lag {
			n, _ := strconv.ParseInt(applied[strconv.Itoa(p)], 10, 64)
			wm = min(wm, n)
		}
	}
	if wm > 0 {
		cur, err := advanceScript.Run(ctx, c.o.Redis, []string{c.keys.Watermark(), c.keys.Sweeps()}, wm, time.Now().UnixMilli()).Int64()
		if err != nil {
			return nil, fmt.Errorf("cannot record the catch-up watermark: %w", err)
		}
		c.raiseWatermark(cur)
	}
	return st, nil
}

// recordApplied raises the newest outcome time applied per partition.
func (c *Coordinator) recordApplied(ctx context.Context, newest map[int]time.Time) error {
	if len(newest) == 0 {
		return nil
	}
	args := make([]any, 0, 2*len(newest))
	for p, t := range newest {
		args = append(args, p, t.UnixMilli())
	}
	if err := appliedScript.Run(ctx, c.o.Redis, []string{c.keys.Applied()}, args...).Err(); err != nil {
		return fmt.Errorf("cannot record the applied outcome times: %w", err)
	}
	return nil
}

func (c *Coordinator) watermarkLoop(ctx context.Context) {
	t := time.NewTicker(c.o.WatermarkEvery)
	defer t.Stop()
	for {
		if _, err := c.CheckLag(ctx); err != nil && ctx.Err() == nil {
			c.o.Log.Warn().Err(err).Msg("cannot check the outcomes lag; the sweep and the daily mail wait")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// showLag sets geckohook_consumer_lag{topic,partition} of the outcomes
// topic to the group's lag, one series per partition (the group's, so every
// coordinator process shows the same); partitions gone, or every one when
// the check failed (nil), are removed.
func (c *Coordinator) showLag(lag map[int]int64) {
	c.lagMu.Lock()
	defer c.lagMu.Unlock()
	for p, name := range c.lagNames {
		if _, ok := lag[p]; !ok {
			c.o.Metrics.UnregisterMetric(name)
			delete(c.lagNames, p)
		}
	}
	for p, n := range lag {
		name, ok := c.lagNames[p]
		if !ok {
			name = `geckohook_consumer_lag{topic="` + c.o.Topic + `",partition="` + strconv.Itoa(p) + `"}`
			c.lagNames[p] = name
		}
		c.o.Metrics.GetOrCreateGauge(name, nil).Set(float64(n))
	}
}
