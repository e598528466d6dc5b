package shard

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// Before the compact layout, a shard kept its scheduled deliveries in
// tag:due (ZSET id -> due), tag:d (HASH id -> msgpack Record) and
// tag:w:<webhook> (ZSET id -> first attempt). Migrate moves them.
func (q *Queue) oldDueKey() string  { return q.tag + ":due" }
func (q *Queue) oldDataKey() string { return q.tag + ":d" }

// migrateBatch is the most old records one migration step moves.
const migrateBatch = 256

// migrateScript drops old-layout entries, ARGV[1] the key tag, then
// (id, webhook) pairs; the same call's KEYS are tag:due and tag:d.
var migrateScript = redis.NewScript(`
for i = 2, #ARGV, 2 do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
  if ARGV[i+1] ~= '' then redis.call('ZREM', ARGV[1] .. ':w:' .. ARGV[i+1], ARGV[i]) end
end
return 0
`)

// Migrate moves the scheduled deliveries a shard's queue holds in the
// layout before the compact one, with their ids, records and due times
// (a lease end stays a lease end), and returns how many it moved. A
// dispatcher runs it when it takes the partition, before it claims
// anything. Each step is a schedule (insert if absent, so a step repeated
// after a crash stores nothing twice) followed by the removal of what it
// stored; a record it cannot decode goes to the dead set as it is.
func (q *Queue) Migrate(ctx context.Context, now time.Time) (int, error) {
	moved := 0
	var cursor uint64
	for {
		ids, next, err := q.rdb.HScan(ctx, q.oldDataKey(), cursor, "", migrateBatch).Result()
		if err != nil {
			return moved, fmt.Errorf("cannot read the old retry queue of %s: %w", q.Shard, err)
		}
		if cursor = next; len(ids) == 0 && cursor == 0 {
			break
		}
		var recs []*Record
		var drop []any
		for i := 0; i+1 < len(ids); i += 2 {
			id, raw := ids[i], ids[i+1]
			rec := new(Record)
			if err := msgpack.Unmarshal([]byte(raw), rec); err != nil || rec.ID != id {
				if err := q.quarantineOld(ctx, id, raw, now); err != nil {
					return moved, err
				}
				continue
			}
			recs = append(recs, rec)
			drop = append(drop, id, rec.WebhookID)
		}
		scores, err := q.oldDueScores(ctx, recs, now)
		if err != nil {
			return moved, err
		}
		if len(recs) > 0 {
			if err := q.schedule(ctx, recs, scores); err != nil {
				return moved, fmt.Errorf("cannot migrate the retry queue of %s: %w", q.Shard, err)
			}
			if err := migrateScript.Run(ctx, q.rdb, []string{q.oldDueKey(), q.oldDataKey()}, append([]any{q.tag}, drop...)...).Err(); err != nil {
				return moved, fmt.Errorf("cannot migrate the retry queue of %s: %w", q.Shard, err)
			}
			moved += len(recs)
		}
	}
	// Ids left in the old due set had no record (the old claim dropped
	// those too).
	if err := q.rdb.Del(ctx, q.oldDueKey()).Err(); err != nil {
		return moved, fmt.Errorf("cannot drop the old due set of %s: %w", q.Shard, err)
	}
	return moved, nil
}

// oldDueScores reads the due times of old records in one round trip; a
// record whose due entry was lost is due at now.
func (q *Queue) oldDueScores(ctx context.Context, recs []*Record, now time.Time) ([]float64, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	ids := make([]string, len(recs))
	for i, rec := range recs {
		ids[i] = rec.ID
	}
	scores, err := q.rdb.ZMScore(ctx, q.oldDueKey(), ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot read the old retry queue of %s: %w", q.Shard, err)
	}
	if len(scores) != len(ids) {
		return nil, fmt.Errorf("cannot read the old retry queue of %s: %d due times for %d records", q.Shard, len(scores), len(ids))
	}
	for i, s := range scores {
		if s == 0 { // no due entry (ZMSCORE's nil): due now
			scores[i] = ms(now)
		}
	}
	return scores, nil
}

// quarantineOld moves an unreadable old record to the dead set as it is.
func (q *Queue) quarantineOld(ctx context.Context, id, raw string, now time.Time) error {
	_, err := q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, q.DeadData, id, raw)
		p.ZAdd(ctx, q.DeadKey, redis.Z{Score: ms(now), Member: id})
		p.ZRem(ctx, q.oldDueKey(), id)
		p.HDel(ctx, q.oldDataKey(), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot move unreadable delivery %s of %s to the dead set: %w", id, q.Shard, err)
	}
	return nil
}
