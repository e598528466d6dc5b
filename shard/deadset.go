package shard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/contract"
)

// GetDead reads a dead record and when it died.
func (q *Queue) GetDead(ctx context.Context, id string) (*Record, time.Time, error) {
	raw, err := q.rdb.HGet(ctx, q.DeadData, id).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, time.Time{}, fmt.Errorf("delivery %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot read delivery %s: %w", id, err)
	}
	score, err := q.rdb.ZScore(ctx, q.DeadKey, id).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, time.Time{}, fmt.Errorf("cannot read the time delivery %s died: %w", id, err)
	}
	rec := new(Record)
	if err := msgpack.Unmarshal(raw, rec); err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot decode delivery %s: %w", id, err)
	}
	return rec, time.UnixMilli(int64(score)), nil
}

// reviveScript moves dead records to their webhooks' chunks, due at
// ARGV[2]: ARGV[1] the key tag, ARGV[3] the number of body forms, then
// (reference, form) pairs, then per record the dead id, its dead bytes as
// read, and scheduleScript's seven values. The forms are stored in the
// same step as the members that refer to them: a claim on an empty shard
// drops the forms (claimScript), which must never fall between the two. A
// record moves only if the dead set still holds it as read; one already
// scheduled (a recovery queued it again) just leaves the dead set. It
// returns per record 0 when it did not move, -1 when it only left the dead
// set, or its chunk + 1.
var reviveScript = redis.NewScript(`
local tag, i, out = ARGV[1], 4, {}
` + chunkLua + storeFormsLua("KEYS[5]", "ARGV[3]") + `
local metas = {}
for i = i, #ARGV, 9 do
  local dead, raw = ARGV[i], ARGV[i+1]
  if redis.call('HGET', KEYS[2], dead) == raw then
    local bucket, id, ix, hook, member, meta = ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6], ARGV[i+8]
    local c, placed = target(hook), -1
    if redis.call('HSETNX', tag .. ':i:' .. bucket, id, ix .. c) == 1 then
      add(hook, member, ARGV[2])
      metas[hook] = meta
      placed = c + 1
    end
    redis.call('ZREM', KEYS[3], dead)
    redis.call('HDEL', KEYS[2], dead)
    redis.call('ZREM', tag .. ':wd:' .. hook, dead)
    out[#out+1] = placed
  else
    out[#out+1] = 0
  end
end
saveStates()
for hook, meta in pairs(metas) do redis.call('HSET', KEYS[4], hook, meta) end
return out
`)

// Revive moves dead deliveries back to their webhooks' chunks, due at now,
// with a fresh retry schedule (Retries 0; Attempts kept), each only if
// the dead set still holds it as read, so a concurrent kill or replay is
// never half-undone. Ids not in the dead set, or unreadable there, are
// skipped; it returns the records it moved.
func (q *Queue) Revive(ctx context.Context, ids []string, now time.Time) ([]*Record, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	raws, err := q.rdb.HMGet(ctx, q.DeadData, ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot read dead deliveries of %s: %w", q.Shard, err)
	}
	var recs []*Record
	var deadRaws []string
	for _, r := range raws {
		s, ok := r.(string)
		if !ok {
			continue
		}
		rec := new(Record)
		if err := msgpack.Unmarshal([]byte(s), rec); err != nil {
			continue // left in the dead set, as it is
		}
		rec.Retries, rec.Deferrals = 0, 0
		recs, deadRaws = append(recs, rec), append(deadRaws, s)
	}
	if len(recs) == 0 {
		return nil, nil
	}
	scores := make([]float64, len(recs))
	batch := q.scheduleArgs(recs, scores)
	args := make([]any, 0, 3+len(batch.forms)+(2+scheduleWidth)*len(recs))
	args = append(args, q.tag, now.UnixMilli(), len(batch.forms)/2)
	args = append(args, batch.forms...)
	for i, rec := range recs {
		args = append(args, rec.ID, deadRaws[i])
		args = append(args, batch.row(i)...)
	}
	keys := []string{q.ChunksKey, q.DeadData, q.DeadKey, q.metaKey, q.formsKey}
	moved, err := reviveScript.Run(ctx, q.rdb, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("cannot move dead deliveries of %s back to due: %w", q.Shard, err)
	}
	batch.cacheForms()
	out := recs[:0]
	for i, rec := range recs {
		if i >= len(moved) || moved[i] == 0 {
			continue
		}
		if moved[i] > 0 {
			rec.member, _ = q.memberOf(rec)
			rec.chunk = strconv.FormatInt(moved[i]-1, 10)
		}
		out = append(out, rec)
	}
	return out, nil
}

// Bad is a claimed member geckohook cannot read, for Quarantine.
type Bad struct {
	Hook string
	// chunk holds member ("": the webhook's sorted set of the layout
	// before chunks).
	chunk, member string
	// pid and ix: the index entry the member's offset and webhook make,
	// if it can be read that far.
	pid, ix string
	// Without pid (its id cannot be read: a stored one, or none at all),
	// Quarantine looks for its index entry: one of the webhook and chunk
	// (and offset, if hasOffset) whose delivery no other member holds.
	offset    int64
	hasOffset bool
}

// badMember makes the Bad of a member of hook's chunk, with the index
// entry of its delivery id (a stored one included) when it can be read
// that far.
func (q *Queue) badMember(hook, chunk, member string) Bad {
	b := Bad{Hook: hook, chunk: chunk, member: member}
	rec, flags, r := q.readHead(member, hook)
	if rec == nil {
		return b
	}
	if r.err != nil {
		or := memberReader{b: []byte(member[2:])}
		off := or.offset()
		if or.err != nil {
			return b
		}
		if flags&fRawID != 0 {
			// Its id is stored, and cannot be read.
			b.offset, b.hasOffset = off, true
			return b
		}
		// Unreadable past its offset: the id the offset derives.
		rec = &Record{WebhookID: hook, Offset: off, ID: contract.DeliveryID(q.topic, int32(q.partition), off, hook)}
	}
	b.pid, b.ix = packedID(rec.ID), indexValue(rec)+chunk
	if chunk == "" {
		b.ix = oldIndexValue(rec)
	}
	return b
}

// ID names a bad member: its SHA-256 prefix, the id under which
// Quarantine files it in the dead set.
func (b Bad) ID() string {
	sum := sha256.Sum256([]byte(b.member))
	return "unreadable-" + hex.EncodeToString(sum[:12])
}

// quarantineScript moves one member, bytes as they are, from chunk
// ARGV[7] of webhook ARGV[6] (ARGV[7] "": its sorted set of the layout
// before chunks) to the dead set under ARGV[2], and drops the index entry
// ARGV[4] if it still says ARGV[5] (the member's webhook, offset and
// chunk, when they could be read), and each entry given from ARGV[9] on
// as (bucket, packed id, value) if it still says that value.
var quarantineScript = redis.NewScript(`
local tag, hook, c = ARGV[8], ARGV[6], ARGV[7]
` + chunkLua + `
local key = tag .. ':q:' .. hook
if c ~= '' then key = qkey(hook, c) end
if redis.call('ZREM', key, ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  if ARGV[4] ~= '' and redis.call('HGET', KEYS[3], ARGV[4]) == ARGV[5] then
    redis.call('HDEL', KEYS[3], ARGV[4])
  end
  for i = 9, #ARGV, 3 do
    local bk = tag .. ':i:' .. ARGV[i]
    if redis.call('HGET', bk, ARGV[i+1]) == ARGV[i+2] then redis.call('HDEL', bk, ARGV[i+1]) end
  end
  if c ~= '' then
    removed(hook, c)
    saveStates()
  end
  return 1
end
return 0
`)

// Quarantine moves a record geckohook cannot read to the dead set as it is
// (under b.ID()), for inspection, so it never blocks or loops the poller.
func (q *Queue) Quarantine(ctx context.Context, b Bad, at time.Time) error {
	args := []any{b.member, b.ID(), at.UnixMilli(), b.pid, b.ix, b.Hook, b.chunk, q.tag}
	if b.pid == "" {
		lost, err := q.lostEntries(ctx, b)
		if err != nil {
			return fmt.Errorf("cannot move unreadable delivery %s of %s to the dead set: %w", b.ID(), q.Shard, err)
		}
		args = append(args, lost...)
	}
	keys := []string{q.DeadKey, q.DeadData, q.indexKey(b.pid)}
	if err := quarantineScript.Run(ctx, q.rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("cannot move unreadable delivery %s of %s to the dead set: %w", b.ID(), q.Shard, err)
	}
	return nil
}

// lostEntries finds the index entries a bad member whose id cannot be
// read may have left, as quarantineScript's (bucket, packed id, value)
// triples: those that place a delivery in its webhook's chunk (at its
// offset, when that could be read) whose id no other member of the chunk
// holds. The index is read before the chunk: an entry and its member are
// written and removed together, so one read then whose member the chunk
// lacks after is the bad member's, or left by nothing (a lost entry,
// dropped all the same). Quarantines are rare: it reads every bucket.
func (q *Queue) lostEntries(ctx context.Context, b Bad) ([]any, error) {
	type entry struct{ bucket, pid, v string }
	var found []entry
	cursors := make(map[string]uint64, 256)
	for i := 0; i < 256; i++ {
		cursors[indexBucket(string([]byte{byte(i)}))] = 0
	}
	for len(cursors) > 0 {
		cmds := make(map[string]*redis.ScanCmd, len(cursors))
		_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for bucket, cur := range cursors {
				cmds[bucket] = p.HScan(ctx, q.tag+":i:"+bucket, cur, "", 1000)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("cannot read the id index: %w", err)
		}
		for bucket, cmd := range cmds {
			kv, next, _ := cmd.Result()
			for i := 0; i+1 < len(kv); i += 2 {
				hook, offset, chunk, ok := parseIndexValue(kv[i+1])
				if ok && hook == b.Hook && chunk == b.chunk && (!b.hasOffset || offset == b.offset) {
					found = append(found, entry{bucket, kv[i], kv[i+1]})
				}
			}
			if cursors[bucket] = next; next == 0 {
				delete(cursors, bucket)
			}
		}
	}
	if len(found) == 0 {
		return nil, nil
	}
	key := q.oldHookKey(b.Hook)
	if b.chunk != "" {
		key = q.chunkKey(b.Hook, b.chunk)
	}
	members, err := q.rdb.ZRange(ctx, key, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot read the chunk of an unreadable delivery: %w", err)
	}
	held := make(map[string]bool, len(members))
	for _, m := range members {
		if rec, _, r := q.readHead(m, b.Hook); rec != nil && r.err == nil {
			held[packedID(rec.ID)] = true
		}
	}
	var out []any
	for _, e := range found {
		if !held[e.pid] {
			out = append(out, e.bucket, e.pid, e.v)
		}
	}
	return out, nil
}

// TrimDead drops dead deliveries older than cutoff, and the oldest beyond
// maxLen, with their records and index entries (Sidekiq keeps its dead set
// the same way: 6 months, 10,000 jobs). It returns how many it dropped.
func (q *Queue) TrimDead(ctx context.Context, cutoff time.Time, maxLen int64) (int, error) {
	dropped := 0
	for {
		card, err := q.rdb.ZCard(ctx, q.DeadKey).Result()
		if err != nil {
			return dropped, fmt.Errorf("cannot count the dead set of %s: %w", q.Shard, err)
		}
		oldest, err := q.rdb.ZRangeWithScores(ctx, q.DeadKey, 0, 499).Result()
		if err != nil {
			return dropped, fmt.Errorf("cannot read the dead set of %s: %w", q.Shard, err)
		}
		var ids []string
		for i, z := range oldest {
			if int64(i) < card-maxLen || z.Score < ms(cutoff) {
				ids = append(ids, z.Member.(string))
			}
		}
		if len(ids) == 0 {
			return dropped, nil
		}
		raws, err := q.rdb.HMGet(ctx, q.DeadData, ids...).Result()
		if err != nil {
			return dropped, fmt.Errorf("cannot read dead deliveries of %s: %w", q.Shard, err)
		}
		_, err = q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.ZRem(ctx, q.DeadKey, toAny(ids)...)
			p.HDel(ctx, q.DeadData, ids...)
			for i, r := range raws {
				rec := new(Record)
				if s, ok := r.(string); ok && msgpack.Unmarshal([]byte(s), rec) == nil && rec.WebhookID != "" {
					p.ZRem(ctx, q.deadHookKey(rec.WebhookID), ids[i])
				}
			}
			return nil
		})
		if err != nil {
			return dropped, fmt.Errorf("cannot trim the dead set of %s: %w", q.Shard, err)
		}
		dropped += len(ids)
	}
}
