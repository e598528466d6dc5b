package shard

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// State of a delivery in the retry queues.
type State string

const (
	Scheduled State = "scheduled"
	Dead      State = "dead"
)

// Store is the view over every shard's queue that the management API needs:
// deliveries are found by webhook or by id without knowing their partition.
// Shards register themselves (a set of shard names) when a dispatcher first
// runs them.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
}

// NewStore returns the store of every queue under prefix ("gh:").
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	return &Store{rdb: rdb, prefix: prefix}
}

func (st *Store) shardsKey() string { return st.prefix + "shards" }

// Register records that the queue of topic's partition exists.
func (st *Store) Register(ctx context.Context, topic string, partition int) error {
	if err := st.rdb.SAdd(ctx, st.shardsKey(), ShardName(topic, partition)).Err(); err != nil {
		return fmt.Errorf("cannot register shard %s: %w", ShardName(topic, partition), err)
	}
	return nil
}

// Queues returns the queue of every registered shard.
func (st *Store) Queues(ctx context.Context) ([]*Queue, error) {
	names, err := st.rdb.SMembers(ctx, st.shardsKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot list shards: %w", err)
	}
	sort.Strings(names)
	qs := make([]*Queue, len(names))
	for i, n := range names {
		qs[i] = queueOf(st.rdb, st.prefix, n)
	}
	return qs, nil
}

// Delivery is a record with where it stands.
type Delivery struct {
	*Record
	State State
	// At is the next attempt for a scheduled delivery (a lease end while
	// an attempt is under way), or when it died.
	At time.Time
}

// List returns up to limit of a webhook's deliveries in state, oldest first
// attempt first. Scheduled deliveries are taken from each shard in the
// order they fall due.
func (st *Store) List(ctx context.Context, webhookID string, state State, limit int) ([]Delivery, error) {
	qs, err := st.Queues(ctx)
	if err != nil {
		return nil, err
	}
	if state == Dead {
		return st.listDead(ctx, qs, webhookID, limit)
	}
	members := make([]*redis.Cmd, len(qs))
	metas := make([]*redis.StringCmd, len(qs))
	_, err = st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range qs {
			members[i] = listScript.Eval(ctx, p, []string{q.ChunksKey, q.statesKey}, q.tag, webhookID, limit)
			metas[i] = p.HGet(ctx, q.metaKey, webhookID)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("cannot list deliveries of webhook %s: %w", webhookID, err)
	}
	var out []Delivery
	for i, q := range qs {
		triples, err := members[i].StringSlice()
		if err != nil {
			return nil, fmt.Errorf("cannot list deliveries of webhook %s: %w", webhookID, err)
		}
		meta := parseMeta(metas[i].Val())
		for j := 0; j+2 < len(triples); j += 3 {
			rec, err := q.decode(ctx, triples[j+1], webhookID, meta)
			if unreadable(err) {
				continue // the poller quarantines it when it falls due
			}
			if err != nil {
				return nil, fmt.Errorf("cannot decode delivery of webhook %s: %w", webhookID, err)
			}
			score, err := strconv.ParseFloat(triples[j+2], 64)
			if err != nil {
				return nil, fmt.Errorf("cannot read the due time of a delivery of webhook %s: %w", webhookID, err)
			}
			rec.chunk = triples[j]
			out = append(out, Delivery{Record: rec, State: Scheduled, At: time.UnixMilli(int64(score))})
		}
	}
	return oldestFirst(out, limit), nil
}

func oldestFirst(out []Delivery, limit int) []Delivery {
	sort.Slice(out, func(i, j int) bool { return out[i].FirstAttempt.Before(out[j].FirstAttempt) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

func (st *Store) listDead(ctx context.Context, qs []*Queue, webhookID string, limit int) ([]Delivery, error) {
	ids := make([]*redis.StringSliceCmd, len(qs))
	_, err := st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range qs {
			ids[i] = p.ZRange(ctx, q.deadHookKey(webhookID), 0, int64(limit-1))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot list deliveries of webhook %s: %w", webhookID, err)
	}
	type found struct {
		raws   *redis.SliceCmd
		scores *redis.FloatSliceCmd
	}
	finds := make([]found, 0, len(qs))
	_, err = st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range qs {
			list := ids[i].Val()
			if len(list) == 0 {
				continue
			}
			finds = append(finds, found{raws: p.HMGet(ctx, q.DeadData, list...), scores: p.ZMScore(ctx, q.DeadKey, list...)})
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("cannot read deliveries of webhook %s: %w", webhookID, err)
	}
	var out []Delivery
	for _, f := range finds {
		scores := f.scores.Val()
		for i, r := range f.raws.Val() {
			s, ok := r.(string)
			if !ok {
				continue // removed between the two reads
			}
			rec := new(Record)
			if err := msgpack.Unmarshal([]byte(s), rec); err != nil {
				return nil, fmt.Errorf("cannot decode delivery of webhook %s: %w", webhookID, err)
			}
			var at time.Time
			if i < len(scores) {
				at = time.UnixMilli(int64(scores[i]))
			}
			out = append(out, Delivery{Record: rec, State: Dead, At: at})
		}
	}
	return oldestFirst(out, limit), nil
}

// Find returns a delivery by id, scheduled (in any layout, the ones before
// chunks included, until they are migrated) or dead, and its queue.
func (st *Store) Find(ctx context.Context, id string) (*Delivery, *Queue, error) {
	qs, err := st.Queues(ctx)
	if err != nil {
		return nil, nil, err
	}
	pid := packedID(id)
	live := make([]*redis.StringCmd, len(qs))
	old := make([]*redis.StringCmd, len(qs)) // the layout before the compact one
	dead := make([]*redis.StringCmd, len(qs))
	_, err = st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range qs {
			live[i] = p.HGet(ctx, q.indexKey(pid), pid)
			old[i] = p.HGet(ctx, q.oldDataKey(), id)
			dead[i] = p.HGet(ctx, q.DeadData, id)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, fmt.Errorf("cannot look delivery %s up: %w", id, err)
	}
	// The pipeline reports only its first error: a shard that failed must
	// not pass for one without the delivery.
	for i := range qs {
		for _, c := range []*redis.StringCmd{live[i], old[i], dead[i]} {
			if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
				return nil, nil, fmt.Errorf("cannot look delivery %s up: %w", id, err)
			}
		}
	}
	for i, q := range qs {
		if live[i].Err() == nil {
			rec, at, err := q.getIndexed(ctx, id, live[i].Val())
			if errors.Is(err, ErrNotFound) {
				continue // delivered since, or its index entry outlived it
			}
			if err != nil {
				return nil, nil, err
			}
			return &Delivery{Record: rec, State: Scheduled, At: at}, q, nil
		}
		if old[i].Err() == nil {
			rec, at, err := q.getOld(ctx, id, old[i].Val())
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, nil, err
			}
			return &Delivery{Record: rec, State: Scheduled, At: at}, q, nil
		}
		if dead[i].Err() == nil {
			rec, at, err := q.GetDead(ctx, id)
			if err != nil {
				return nil, nil, err
			}
			return &Delivery{Record: rec, State: Dead, At: at}, q, nil
		}
	}
	return nil, nil, fmt.Errorf("delivery %s: %w", id, ErrNotFound)
}

// ReviveWebhook moves every dead delivery of a webhook back to due at now
// and returns how many moved.
func (st *Store) ReviveWebhook(ctx context.Context, webhookID string, now time.Time) (int, error) {
	qs, err := st.Queues(ctx)
	if err != nil {
		return 0, err
	}
	total := 0
	for _, q := range qs {
		for {
			ids, err := st.rdb.ZRange(ctx, q.deadHookKey(webhookID), 0, 499).Result()
			if err != nil {
				return total, fmt.Errorf("cannot list dead deliveries of webhook %s: %w", webhookID, err)
			}
			if len(ids) == 0 {
				break
			}
			moved, err := q.Revive(ctx, ids, now)
			if err != nil {
				return total, err
			}
			total += len(moved)
			if len(moved) < len(ids) {
				// Index entries without a dead record: drop them so the
				// loop ends.
				if err := st.rdb.ZRem(ctx, q.deadHookKey(webhookID), toAny(ids)...).Err(); err != nil {
					return total, fmt.Errorf("cannot clean the dead index of webhook %s: %w", webhookID, err)
				}
			}
		}
	}
	return total, nil
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// indexLenScript counts a shard's scheduled deliveries by their entries in
// the id index: 256 HLENs, however many webhooks have deliveries queued
// (Queue.Len, which counts every webhook's ZSET, blocks Redis for about
// 280 ms per 100,000 such webhooks).
var indexLenScript = redis.NewScript(`
local n = 0
for b = 0, 255 do
  n = n + redis.call('HLEN', ARGV[1] .. ':i:' .. string.format('%02x', b))
end
return n
`)

// Depth returns how many deliveries wait in every registered shard's
// retry queue and dead set (each read in constant time: /metrics asks on
// every scrape).
func (st *Store) Depth(ctx context.Context) (scheduled, dead int64, err error) {
	qs, err := st.Queues(ctx)
	if err != nil {
		return 0, 0, err
	}
	due := make([]*redis.Cmd, len(qs))
	died := make([]*redis.IntCmd, len(qs))
	_, err = st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range qs {
			due[i], died[i] = indexLenScript.Eval(ctx, p, []string{q.ChunksKey}, q.tag), p.ZCard(ctx, q.DeadKey)
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("cannot count the retry queues: %w", err)
	}
	for i := range qs {
		n, _ := due[i].Int64()
		scheduled += n
		dead += died[i].Val()
	}
	return scheduled, dead, nil
}

// WebhookDepths returns, per webhook id, how many of its deliveries wait in
// the retry queues of every registered shard, scheduled or dead.
func (st *Store) WebhookDepths(ctx context.Context, webhookIDs []string) (map[string]int64, error) {
	qs, err := st.Queues(ctx)
	if err != nil {
		return nil, err
	}
	type counts struct {
		scheduled *redis.Cmd
		dead      *redis.IntCmd
	}
	cmds := make([]counts, 0, len(qs)*len(webhookIDs))
	_, err = st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range webhookIDs {
			for _, q := range qs {
				cmds = append(cmds, counts{hookLenScript.Eval(ctx, p, []string{q.statesKey}, q.tag, id), p.ZCard(ctx, q.deadHookKey(id))})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot count the retry queues of %d webhooks: %w", len(webhookIDs), err)
	}
	out := make(map[string]int64, len(webhookIDs))
	per := len(qs)
	for i, id := range webhookIDs {
		for _, c := range cmds[i*per : (i+1)*per] {
			n, _ := c.scheduled.Int64()
			out[id] += n + c.dead.Val()
		}
	}
	return out, nil
}

// Records returns every record of the queue in state, and how many it
// could not decode (for inspection tools and tests; it reads the whole
// shard).
func (q *Queue) Records(ctx context.Context, state State) (recs []*Record, unreadable int, err error) {
	if state == Dead {
		raws, err := q.rdb.HGetAll(ctx, q.DeadData).Result()
		if err != nil {
			return nil, 0, fmt.Errorf("cannot read %s: %w", q.DeadData, err)
		}
		for _, raw := range raws {
			rec := new(Record)
			if msgpack.Unmarshal([]byte(raw), rec) != nil {
				unreadable++
				continue
			}
			recs = append(recs, rec)
		}
		return recs, unreadable, nil
	}
	chunks, err := q.rdb.ZRange(ctx, q.ChunksKey, 0, -1).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read %s: %w", q.ChunksKey, err)
	}
	for _, chunk := range chunks {
		i := strings.LastIndexByte(chunk, ':')
		if i < 0 {
			continue
		}
		hook, c := chunk[:i], chunk[i+1:]
		members, err := q.rdb.ZRange(ctx, q.chunkKey(hook, c), 0, -1).Result()
		if err != nil {
			return nil, 0, fmt.Errorf("cannot read %s: %w", q.chunkKey(hook, c), err)
		}
		meta, err := q.rdb.HGet(ctx, q.metaKey, hook).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, 0, fmt.Errorf("cannot read %s: %w", q.metaKey, err)
		}
		for _, m := range members {
			rec, err := q.decode(ctx, m, hook, parseMeta(meta))
			if err != nil {
				unreadable++
				continue
			}
			rec.chunk = c
			recs = append(recs, rec)
		}
	}
	return recs, unreadable, nil
}
