package shard

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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

// Migrate moves the scheduled deliveries a shard's queue holds in the
// layouts before chunks, with their ids, records and due times (a lease
// end stays a lease end), and returns how many it moved. A dispatcher
// runs it when it takes the partition, before it claims anything, and
// again every minute (a process of the old version may still write
// during a rolling upgrade).
func (q *Queue) Migrate(ctx context.Context, now time.Time) (int, error) {
	// Chunks placed before the scripts kept the mark of chunks.go get it.
	if err := q.rdb.ZAddNX(ctx, q.oldHooksKey(), redis.Z{Score: markScore, Member: ""}).Err(); err != nil {
		return 0, fmt.Errorf("cannot mark the chunks of %s for the layout before them: %w", q.Shard, err)
	}
	if err := hookIndexScript.Run(ctx, q.rdb, []string{q.ChunksKey}, q.tag).Err(); err != nil {
		return 0, fmt.Errorf("cannot index the webhooks of %s: %w", q.Shard, err)
	}
	moved, err := q.migrateUnchunked(ctx, now)
	if err != nil {
		return moved, err
	}
	n, err := q.migrateMsgpack(ctx, now)
	if err != nil {
		return moved + n, err
	}
	return moved + n, q.dropUnusedForms(ctx)
}

// formSweepMin is how many body forms a shard keeps before
// dropUnusedForms looks for unused ones.
const formSweepMin = 1024

// formSweepMaxChunks is the most chunks a shard may have for
// dropUnusedForms to sweep it: the sweep is one script that reads every
// scheduled member, and Redis serves nothing else meanwhile (about 4 µs a
// member: 0.85 s for 200,000). Past it the sweep waits for the backlog
// to shrink; at most 400 × chunkSize members keeps a sweep near 0.2 s.
const formSweepMaxChunks = 400

// dropUnusedForms drops the body forms no scheduled member refers to once
// the shard holds more than formSweepMin and twice as many as were in use
// at its last sweep, and no more than formSweepMaxChunks chunks. Forms are otherwise dropped only when the shard is
// empty (claimScript), which a busy shard never is, and resource URLs
// that name an account or another id make a form per delivery.
func (q *Queue) dropUnusedForms(ctx context.Context) error {
	n, err := q.rdb.HLen(ctx, q.formsKey).Result()
	if err != nil {
		return fmt.Errorf("cannot count the body forms of %s: %w", q.Shard, err)
	}
	if n <= max(formSweepMin, 2*q.formsInUse.Load()) {
		return nil
	}
	chunks, err := q.rdb.ZCard(ctx, q.ChunksKey).Result()
	if err != nil {
		return fmt.Errorf("cannot count the chunks of %s: %w", q.Shard, err)
	}
	if chunks > formSweepMaxChunks {
		return nil
	}
	live, err := formSweepScript.Run(ctx, q.rdb, []string{q.ChunksKey, q.formsKey, q.oldHooksKey()}, q.tag).Int64()
	if err != nil {
		return fmt.Errorf("cannot drop the unused body forms of %s: %w", q.Shard, err)
	}
	q.formsInUse.Store(live)
	return nil
}

// formSweepScript drops the body forms (KEYS[2]) no member of a chunk
// (KEYS[1] lists them) or of a webhook's sorted set of the layout before
// chunks (KEYS[3]) refers to, ARGV[1] the key tag, and returns how many
// it kept. One script: every member that exists is read, and one placed
// after it stores its form again (HSETNX) as it is placed. It reads each
// member's reference where member.go puts it: after the version, flags,
// offset, four counts, the attempt times and a stored id.
var formSweepScript = redis.NewScript(`
local tag, used = ARGV[1], {}
local function uvarint(m, p)
  local v, mul = 0, 1
  while true do
    local b = string.byte(m, p)
    if not b then return nil, p end
    p = p + 1
    if b < 128 then return v + b * mul, p end
    v, mul = v + (b - 128) * mul, mul * 128
  end
end
local function has(flags, f) return math.floor(flags / f) % 2 == 1 end
local function note(m)
  if string.byte(m, 1) ~= ` + strconv.Itoa(memberVersion) + ` then return end
  local flags = string.byte(m, 2) or 0
  if has(flags, ` + strconv.Itoa(fRawBody) + `) then return end
  local p = 4 + (string.byte(m, 3) or 0)
  local _
  for _ = 1, 4 do _, p = uvarint(m, p) end
  if has(flags, ` + strconv.Itoa(fFirstAttempt) + `) then _, p = uvarint(m, p) end
  if has(flags, ` + strconv.Itoa(fLastAttempt) + `) then _, p = uvarint(m, p) end
  if has(flags, ` + strconv.Itoa(fRawID) + `) then
    local l
    l, p = uvarint(m, p)
    if not l then return end
    p = p + l
  end
  used[string.sub(m, p, p + 7)] = true
end
local function noteAll(key)
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do note(m) end
end
for _, chunk in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do noteAll(tag .. ':q:' .. chunk) end
for _, hook in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if hook ~= '' then noteAll(tag .. ':q:' .. hook) end
end
local drop, kept = {}, 0
for _, ref in ipairs(redis.call('HKEYS', KEYS[2])) do
  if used[ref] then kept = kept + 1 else drop[#drop+1] = ref end
end
for k = 1, #drop, 500 do
  redis.call('HDEL', KEYS[2], unpack(drop, k, math.min(k + 499, #drop)))
end
return kept
`)

// hookIndexScript fills the webhook index, tag:qh, of a shard whose
// chunks were placed by a version without it (ARGV[1] the key tag): each
// webhook with chunks, scored by the earliest of them. A shard that has
// the index, or no chunks, is left as it is.
var hookIndexScript = redis.NewScript(`
local tag = ARGV[1]
if redis.call('EXISTS', tag .. ':qh') == 1 or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
` + chunkLua + `
for _, hook in ipairs(redis.call('HKEYS', tag .. ':qn')) do
  local chunks = hookChunks(hook)
  if chunks[1] then redis.call('ZADD', tag .. ':qh', 'LT', chunks[1].min, hook) end
end
return 1
`)

// migrateMsgpack moves the deliveries of the layout before the compact
// one (tag:due, tag:d, tag:w:<webhook>), a batch per script (moveOld:
// atomic, so a step repeated after a crash, or run by two processes at
// once, stores nothing twice); a record it cannot decode goes to the dead
// set as it is.
func (q *Queue) migrateMsgpack(ctx context.Context, now time.Time) (int, error) {
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
		var raws []string
		for i := 0; i+1 < len(ids); i += 2 {
			id, raw := ids[i], ids[i+1]
			rec := new(Record)
			if err := msgpack.Unmarshal([]byte(raw), rec); err != nil || rec.ID != id {
				if err := q.quarantineOld(ctx, id, raw, now); err != nil {
					return moved, err
				}
				continue
			}
			recs, raws = append(recs, rec), append(raws, raw)
		}
		n, err := q.moveOld(ctx, recs, raws, now)
		moved += n
		if err != nil {
			return moved, err
		}
	}
	// Ids left in the old due set had no record (the old claim dropped
	// those too).
	if err := q.rdb.Del(ctx, q.oldDueKey()).Err(); err != nil {
		return moved, fmt.Errorf("cannot drop the old due set of %s: %w", q.Shard, err)
	}
	return moved, nil
}

// moveOldScript moves old records to chunks, each only if the old layout
// still holds it as read (a process that migrates at the same time may
// have moved it, and it may have been delivered since): ARGV[1] the key
// tag, ARGV[2] the number of body forms, then (reference, form) pairs,
// then per record its old id, its old bytes as read, and scheduleScript's
// seven values. A record already in the id index (migrated before, and
// written again by a process of the old version) keeps its chunked copy;
// either way the old entries go. It returns how many it took from the old
// layout.
var moveOldScript = redis.NewScript(`
local tag, i = ARGV[1], 3
` + chunkLua + storeFormsLua("KEYS[3]", "ARGV[2]") + `
local moved, metas = 0, {}
while i <= #ARGV do
  local old, raw, bucket, id, ix, hook, member, score, meta = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+7], ARGV[i+8]
  i = i + 9
  if redis.call('HGET', KEYS[5], old) == raw then
    if redis.call('HSETNX', tag .. ':i:' .. bucket, id, ix .. target(hook)) == 1 then
      add(hook, member, score)
      metas[hook] = meta
    end
    redis.call('HDEL', KEYS[5], old)
    redis.call('ZREM', KEYS[4], old)
    redis.call('ZREM', tag .. ':w:' .. hook, old)
    moved = moved + 1
  end
end
saveStates()
for hook, meta in pairs(metas) do redis.call('HSET', KEYS[2], hook, meta) end
return moved
`)

// moveOld moves old records, read as raws, to chunks (moveOldScript) and
// returns how many it took from the old layout.
func (q *Queue) moveOld(ctx context.Context, recs []*Record, raws []string, now time.Time) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	scores, err := q.oldDueScores(ctx, recs, now)
	if err != nil {
		return 0, err
	}
	b := q.scheduleArgs(recs, scores)
	args := make([]any, 0, 2+len(b.forms)+(2+scheduleWidth)*len(recs))
	args = append(args, q.tag, len(b.forms)/2)
	args = append(args, b.forms...)
	for i, rec := range recs {
		args = append(args, rec.ID, raws[i])
		args = append(args, b.row(i)...)
	}
	keys := []string{q.ChunksKey, q.metaKey, q.formsKey, q.oldDueKey(), q.oldDataKey()}
	moved, err := moveOldScript.Run(ctx, q.rdb, keys, args...).Int()
	if err != nil {
		return 0, fmt.Errorf("cannot migrate the retry queue of %s: %w", q.Shard, err)
	}
	b.cacheForms()
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

// Before chunks, a shard kept each webhook's scheduled deliveries in one
// sorted set, tag:q:<webhook> (compact members, as now), indexed by
// tag:hooks (webhook -> earliest due time), with index values that named
// no chunk.
func (q *Queue) oldHooksKey() string           { return q.tag + ":hooks" }
func (q *Queue) oldHookKey(hook string) string { return q.tag + ":q:" + hook }

// oldIndexValue is the index value the layout before chunks wrote.
func oldIndexValue(rec *Record) string {
	v := []byte(indexValue(rec))
	v[0] -= ixChunkedFirst
	return string(v)
}

// unchunkScript moves members of webhook ARGV[2]'s sorted set of the
// layout before chunks to its chunks, ARGV[1] the key tag, then per
// member its index bucket, packed id, index value (without its chunk),
// member and score. A member whose delivery the index already places in
// a chunk (migrated before, and written again by a process of the old
// version) is only dropped. The webhook leaves tag:hooks once its sorted
// set is empty.
var unchunkScript = redis.NewScript(`
local tag, hook = ARGV[1], ARGV[2]
` + chunkLua + `
local old = tag .. ':q:' .. hook
for i = 3, #ARGV, 5 do
  local bk, id, ix, member, score = tag .. ':i:' .. ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  if redis.call('ZREM', old, member) == 1 then
    local v = redis.call('HGET', bk, id)
    if not v or string.byte(v, 1) < ` + strconv.Itoa(ixChunkedFirst) + ` then
      redis.call('HSET', bk, id, ix .. place(hook, member, score))
    end
  end
end
if redis.call('EXISTS', old) == 0 then redis.call('ZREM', tag .. ':hooks', hook) end
saveStates()
return 0
`)

// migrateUnchunked moves the deliveries of the layout before chunks, a
// batch of one webhook's at a time, each batch in one script (atomic: a
// crash never leaves a delivery in both layouts or in neither). A member
// it cannot decode goes to the dead set as it is.
func (q *Queue) migrateUnchunked(ctx context.Context, now time.Time) (int, error) {
	hooks, err := q.rdb.ZRange(ctx, q.oldHooksKey(), 0, -1).Result()
	if err != nil {
		return 0, fmt.Errorf("cannot read the unchunked retry queue of %s: %w", q.Shard, err)
	}
	moved := 0
	for _, hook := range hooks {
		if hook == "" {
			continue // the mark of chunks.go
		}
		n, err := q.migrateHook(ctx, hook, now)
		moved += n
		if err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// migrateHook moves the members of webhook hook's sorted set of the
// layout before chunks to its chunks, a batch per script, and returns how
// many it moved.
func (q *Queue) migrateHook(ctx context.Context, hook string, now time.Time) (int, error) {
	meta, err := q.rdb.HGet(ctx, q.metaKey, hook).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("cannot read the unchunked retry queue of %s: %w", q.Shard, err)
	}
	moved := 0
	for {
		zs, err := q.rdb.ZRangeWithScores(ctx, q.oldHookKey(hook), 0, migrateBatch-1).Result()
		if err != nil {
			return moved, fmt.Errorf("cannot read the unchunked retry queue of %s: %w", q.Shard, err)
		}
		args := []any{q.tag, hook}
		for _, z := range zs {
			member, _ := z.Member.(string)
			rec, err := q.decode(ctx, member, hook, parseMeta(meta))
			if unreadable(err) {
				if err := q.Quarantine(ctx, q.badMember(hook, "", member), now); err != nil {
					return moved, err
				}
				continue
			}
			if err != nil {
				return moved, fmt.Errorf("cannot migrate the retry queue of %s: %w", q.Shard, err)
			}
			pid := packedID(rec.ID)
			args = append(args, indexBucket(pid), pid, indexValue(rec), member, z.Score)
		}
		if err := unchunkScript.Run(ctx, q.rdb, []string{q.ChunksKey, q.oldHookKey(hook)}, args...).Err(); err != nil {
			return moved, fmt.Errorf("cannot migrate the retry queue of %s: %w", q.Shard, err)
		}
		moved += (len(args) - 2) / 5
		if len(zs) < migrateBatch {
			return moved, nil
		}
	}
}

// migrateDelivery moves delivery rec, found in a layout before chunks,
// to a chunk now rather than at the shard's next migration: with the rest
// of its webhook's sorted set of the layout before chunks, or alone from
// the layout before the compact one (moveOld), as Migrate would.
func (q *Queue) migrateDelivery(ctx context.Context, rec *Record, now time.Time) error {
	if rec.member != "" {
		_, err := q.migrateHook(ctx, rec.WebhookID, now)
		return err
	}
	raw, err := q.rdb.HGet(ctx, q.oldDataKey(), rec.ID).Result()
	if errors.Is(err, redis.Nil) {
		return nil // moved or delivered meanwhile
	}
	if err != nil {
		return fmt.Errorf("cannot read the old retry queue of %s: %w", q.Shard, err)
	}
	old := new(Record)
	if err := msgpack.Unmarshal([]byte(raw), old); err != nil || old.ID != rec.ID {
		return q.quarantineOld(ctx, rec.ID, raw, now)
	}
	_, err = q.moveOld(ctx, []*Record{old}, []string{raw}, now)
	return err
}

// getOld reads delivery id's record of the layout before the compact one,
// raw as the old data hash holds it, and its due time.
func (q *Queue) getOld(ctx context.Context, id, raw string) (*Record, time.Time, error) {
	rec := new(Record)
	if err := msgpack.Unmarshal([]byte(raw), rec); err != nil || rec.ID != id {
		// Migration files it in the dead set.
		return nil, time.Time{}, fmt.Errorf("delivery %s (unreadable, in the old layout): %w", id, ErrNotFound)
	}
	due, err := q.rdb.ZScore(ctx, q.oldDueKey(), id).Result()
	if errors.Is(err, redis.Nil) {
		return rec, time.Time{}, nil // due at once: the migration schedules it at its time
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot read delivery %s: %w", id, err)
	}
	return rec, time.UnixMilli(int64(due)), nil
}
