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

// Record is one delivery waiting for a retry (or dead), stored msgpack-encoded
// in the shard's hash. It holds everything a re-send needs except the address
// and secret, which are looked up in the registry at send time.
type Record struct {
	ID        string `msgpack:"id"` // X-Gecko-Delivery
	WebhookID string `msgpack:"webhook_id"`
	AppID     string `msgpack:"app_id"`
	AccountID string `msgpack:"account_id"`
	Event     string `msgpack:"event"`
	Body      []byte `msgpack:"body"`
	// Attempts made so far (1 after the first failure; 0 when the first
	// was deferred without an attempt because its host was saturated).
	Attempts int `msgpack:"attempts"`
	// Retries taken from the queue so far: the n of Sidekiq's formula for
	// the next one. A replay from the dead set starts it again at 0.
	Retries int `msgpack:"retries"`
	// Deferrals since the last attempt: times it waited without one
	// because its host was saturated (a dead host holds only its limit of
	// attempts). The n-th waits as long as Sidekiq's retry n-1, so a dead
	// host's backlog is claimed less and less often instead of every
	// 15-25 s; it spends no retry.
	Deferrals int `msgpack:"deferrals,omitempty"`
	// RetryAfter: the next attempt waits for the receiver's Retry-After
	// (a 429 or 503 asked for longer than the retry schedule).
	RetryAfter   bool      `msgpack:"retry_after,omitempty"`
	FirstAttempt time.Time `msgpack:"first_attempt"`
	LastAttempt  time.Time `msgpack:"last_attempt"`
	LastStatus   int       `msgpack:"last_status"`
	LastError    string    `msgpack:"last_error"`
	Topic        string    `msgpack:"topic"`
	Partition    int32     `msgpack:"partition"`
	Offset       int64     `msgpack:"offset"`
}

// Entry is a record to store with its due time; Dead entries go to the dead
// set instead (no retries left).
type Entry struct {
	Rec  *Record
	Due  time.Time
	Dead bool
}

// Queue is one shard's retry queue in Redis. Every key shares the hash tag
// {topic-partition}, so scripts and transactions never cross Redis Cluster
// slots.
type Queue struct {
	rdb      redis.UniversalClient
	Shard    string // "topic-partition", the hash tag's content
	DueKey   string // ZSET delivery id -> due time (ms); claimed: lease end
	DataKey  string // HASH delivery id -> msgpack Record
	DeadKey  string // ZSET delivery id -> time it died (ms)
	DeadData string // HASH delivery id -> msgpack Record
	// Per-webhook indexes (ZSET delivery id -> first attempt, ms), so a
	// webhook's deliveries are listed without scanning the shard:
	// hookKey(webhook) for scheduled ones, deadHookKey(webhook) for dead.
	tag string
}

// ShardName is the name of topic's partition: the content of its keys' hash tag.
func ShardName(topic string, partition int) string {
	return topic + "-" + strconv.Itoa(partition)
}

// NewQueue returns the queue of topic's partition.
func NewQueue(rdb redis.UniversalClient, prefix, topic string, partition int) *Queue {
	return queueOf(rdb, prefix, ShardName(topic, partition))
}

func queueOf(rdb redis.UniversalClient, prefix, shard string) *Queue {
	tag := prefix + "{" + shard + "}"
	return &Queue{rdb: rdb, Shard: shard, tag: tag, DueKey: tag + ":due", DataKey: tag + ":d", DeadKey: tag + ":dead", DeadData: tag + ":dead:d"}
}

func (q *Queue) hookKey(webhookID string) string     { return q.tag + ":w:" + webhookID }
func (q *Queue) deadHookKey(webhookID string) string { return q.tag + ":wd:" + webhookID }

func ms(t time.Time) float64 { return float64(t.UnixMilli()) }

// Schedule stores entries in one pipelined round trip. It is an insert if
// absent: a delivery replayed after a crash keeps the record (attempt count,
// due time) it already has, so a replay never creates a second record.
func (q *Queue) Schedule(ctx context.Context, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	var due, dead []redis.Z
	live, gone := indexes{}, indexes{}
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range entries {
			raw, err := msgpack.Marshal(e.Rec)
			if err != nil {
				return fmt.Errorf("cannot encode delivery %s: %w", e.Rec.ID, err)
			}
			z := redis.Z{Score: ms(e.Due), Member: e.Rec.ID}
			if e.Dead {
				p.HSetNX(ctx, q.DeadData, e.Rec.ID, raw)
				dead = append(dead, z)
				gone.add(e.Rec)
			} else {
				p.HSetNX(ctx, q.DataKey, e.Rec.ID, raw)
				due = append(due, z)
				live.add(e.Rec)
			}
		}
		if len(due) > 0 {
			p.ZAddNX(ctx, q.DueKey, due...)
		}
		if len(dead) > 0 {
			p.ZAddNX(ctx, q.DeadKey, dead...)
		}
		live.write(ctx, p, q.hookKey, true)
		gone.write(ctx, p, q.deadHookKey, true)
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot schedule %d deliveries in %s: %w", len(entries), q.DueKey, err)
	}
	return nil
}

// indexes gathers per-webhook index entries (id -> first attempt) so each
// webhook's index is written with one command.
type indexes map[string][]redis.Z

func (ix indexes) add(r *Record) {
	ix[r.WebhookID] = append(ix[r.WebhookID], redis.Z{Score: ms(r.FirstAttempt), Member: r.ID})
}

func (ix indexes) write(ctx context.Context, p redis.Pipeliner, key func(string) string, add bool) {
	for hook, zs := range ix {
		if add {
			p.ZAddNX(ctx, key(hook), zs...)
			continue
		}
		ids := make([]any, len(zs))
		for i, z := range zs {
			ids[i] = z.Member
		}
		p.ZRem(ctx, key(hook), ids...)
	}
}

// claimScript takes up to ARGV[3] ids due at ARGV[1] and re-scores them to
// the lease end ARGV[2], so a process that dies mid-attempt gives them back
// when the lease runs out. It returns the ids with their records (an id
// whose record is missing is removed) and the earliest score left.
var claimScript = redis.NewScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #ids == 0 then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {{}, first[2] or ''}
end
local raws = redis.call('HMGET', KEYS[2], unpack(ids))
local out, lease, orphans = {}, {'XX'}, {}
for i, id in ipairs(ids) do
  if raws[i] then
    out[#out+1] = id
    out[#out+1] = raws[i]
    lease[#lease+1] = ARGV[2]
    lease[#lease+1] = id
  else
    orphans[#orphans+1] = id
  end
end
if #out > 0 then redis.call('ZADD', KEYS[1], unpack(lease)) end
if #orphans > 0 then redis.call('ZREM', KEYS[1], unpack(orphans)) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {out, first[2] or ''}
`)

// Claim leases up to n deliveries due at now until leaseEnd and returns their
// records, the ids of claimed records it could not decode (for Quarantine),
// and when the earliest delivery left is due (zero when none is).
func (q *Queue) Claim(ctx context.Context, now, leaseEnd time.Time, n int) (recs []*Record, bad []string, next time.Time, err error) {
	res, err := claimScript.Run(ctx, q.rdb, []string{q.DueKey, q.DataKey},
		now.UnixMilli(), leaseEnd.UnixMilli(), n).Slice()
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("cannot claim due deliveries of %s: %w", q.Shard, err)
	}
	if len(res) != 2 {
		return nil, nil, time.Time{}, fmt.Errorf("cannot claim due deliveries of %s: unexpected reply %v", q.Shard, res)
	}
	pairs, _ := res[0].([]any)
	recs = make([]*Record, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		id, _ := pairs[i].(string)
		raw, _ := pairs[i+1].(string)
		rec := new(Record)
		if err := msgpack.Unmarshal([]byte(raw), rec); err != nil || rec.ID != id {
			bad = append(bad, id)
			continue
		}
		recs = append(recs, rec)
	}
	if s, _ := res[1].(string); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			next = time.UnixMilli(int64(f))
		}
	}
	return recs, bad, next, nil
}

// OpKind says what to do with a delivery after an attempt.
type OpKind uint8

const (
	// OpRemove: delivered, gone, or its webhook deleted.
	OpRemove OpKind = iota + 1
	// OpReschedule: store the updated record, due at Op.At.
	OpReschedule
	// OpKill: no retries left; move to the dead set (died at Op.At).
	OpKill
)

// Op is one change to a claimed delivery.
type Op struct {
	Kind OpKind
	Rec  *Record
	At   time.Time
}

// Apply makes the changes in one transaction (MULTI/EXEC, one round trip),
// one command per key where it can. A dead entry is written before the live
// one is removed.
func (q *Queue) Apply(ctx context.Context, ops []Op) error {
	if len(ops) == 0 {
		return nil
	}
	var (
		data, deadData []any     // field, value, ...
		due, dead      []redis.Z // new scores
		drop           []any     // ids leaving the due set and the hash
		dropIx, deadIx = indexes{}, indexes{}
	)
	for _, op := range ops {
		id := op.Rec.ID
		switch op.Kind {
		case OpRemove:
			drop = append(drop, id)
			dropIx.add(op.Rec)
		case OpReschedule:
			raw, err := msgpack.Marshal(op.Rec)
			if err != nil {
				return fmt.Errorf("cannot encode delivery %s: %w", id, err)
			}
			data = append(data, id, raw)
			due = append(due, redis.Z{Score: ms(op.At), Member: id})
		case OpKill:
			raw, err := msgpack.Marshal(op.Rec)
			if err != nil {
				return fmt.Errorf("cannot encode delivery %s: %w", id, err)
			}
			deadData = append(deadData, id, raw)
			dead = append(dead, redis.Z{Score: ms(op.At), Member: id})
			deadIx.add(op.Rec)
			drop = append(drop, id)
			dropIx.add(op.Rec)
		default:
			return fmt.Errorf("unknown retry queue operation %d", op.Kind)
		}
	}
	// One transaction: a replay from the dead set (Revive) sees a kill
	// whole or not at all.
	_, err := q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if len(deadData) > 0 {
			p.HSet(ctx, q.DeadData, deadData...)
			p.ZAdd(ctx, q.DeadKey, dead...)
			deadIx.write(ctx, p, q.deadHookKey, true)
		}
		if len(data) > 0 {
			p.HSet(ctx, q.DataKey, data...)
			p.ZAdd(ctx, q.DueKey, due...)
		}
		if len(drop) > 0 {
			p.ZRem(ctx, q.DueKey, drop...)
			p.HDel(ctx, q.DataKey, toStrings(drop)...)
			dropIx.write(ctx, p, q.hookKey, false)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot update %d deliveries in %s: %w", len(ops), q.DueKey, err)
	}
	return nil
}

func toStrings(xs []any) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.(string)
	}
	return out
}

// ErrNotFound: no such delivery in this queue.
var ErrNotFound = errors.New("delivery not found")

// Get reads a scheduled record and its due time (for inspection and tests).
func (q *Queue) Get(ctx context.Context, id string) (*Record, time.Time, error) {
	return q.get(ctx, q.DataKey, q.DueKey, id)
}

// GetDead reads a dead record and when it died.
func (q *Queue) GetDead(ctx context.Context, id string) (*Record, time.Time, error) {
	return q.get(ctx, q.DeadData, q.DeadKey, id)
}

func (q *Queue) get(ctx context.Context, dataKey, zsetKey, id string) (*Record, time.Time, error) {
	raw, err := q.rdb.HGet(ctx, dataKey, id).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, time.Time{}, fmt.Errorf("delivery %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot read delivery %s: %w", id, err)
	}
	score, err := q.rdb.ZScore(ctx, zsetKey, id).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, time.Time{}, fmt.Errorf("cannot read due time of delivery %s: %w", id, err)
	}
	rec := new(Record)
	if err := msgpack.Unmarshal(raw, rec); err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot decode delivery %s: %w", id, err)
	}
	return rec, time.UnixMilli(int64(score)), nil
}

var retryNowScript = redis.NewScript(`
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 1
end
return 0
`)

// RetryNow makes a scheduled delivery due at now. It reports false when the
// delivery is not scheduled here.
func (q *Queue) RetryNow(ctx context.Context, id string, now time.Time) (bool, error) {
	n, err := retryNowScript.Run(ctx, q.rdb, []string{q.DueKey}, id, now.UnixMilli()).Int()
	if err != nil {
		return false, fmt.Errorf("cannot make delivery %s due: %w", id, err)
	}
	return n == 1, nil
}

// Revive moves dead deliveries back to the due set, due at now, with a
// fresh retry schedule (Retries 0; Attempts kept), in one transaction that
// WATCHes the dead records, so a concurrent kill or replay is never
// half-undone. Ids not in the dead set, or unreadable there, are skipped; it
// returns the records it moved.
func (q *Queue) Revive(ctx context.Context, ids []string, now time.Time) ([]*Record, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	var moved []*Record
	revive := func(tx *redis.Tx) error {
		moved = moved[:0]
		raws, err := tx.HMGet(ctx, q.DeadData, ids...).Result()
		if err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
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
				raw, err := msgpack.Marshal(rec)
				if err != nil {
					return fmt.Errorf("cannot encode delivery %s: %w", rec.ID, err)
				}
				p.HSet(ctx, q.DataKey, rec.ID, raw)
				p.ZAdd(ctx, q.DueKey, redis.Z{Score: ms(now), Member: rec.ID})
				p.ZAdd(ctx, q.hookKey(rec.WebhookID), redis.Z{Score: ms(rec.FirstAttempt), Member: rec.ID})
				p.ZRem(ctx, q.DeadKey, rec.ID)
				p.HDel(ctx, q.DeadData, rec.ID)
				p.ZRem(ctx, q.deadHookKey(rec.WebhookID), rec.ID)
				moved = append(moved, rec)
			}
			return nil
		})
		return err
	}
	var err error
	for range 20 { // the dead set changes under a busy shard: try again
		if err = q.rdb.Watch(ctx, revive, q.DeadData); !errors.Is(err, redis.TxFailedErr) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cannot move dead deliveries of %s back to due: %w", q.Shard, err)
	}
	return moved, nil
}

// Len returns how many deliveries are scheduled.
func (q *Queue) Len(ctx context.Context) (int64, error) {
	return q.rdb.ZCard(ctx, q.DueKey).Result()
}

// DeadLen returns how many deliveries are dead.
func (q *Queue) DeadLen(ctx context.Context) (int64, error) {
	return q.rdb.ZCard(ctx, q.DeadKey).Result()
}

// Lease is a claim this process holds: the score the claim (or its last
// extension) gave the delivery.
type Lease struct {
	ID  string
	End time.Time
}

// moveLeaseScript re-scores each ARGV[2k] to ARGV[1] only if its score is
// still ARGV[2k+1], the lease end its holder set: once an attempt's outcome
// is written (a new due time, or the record gone), the move does nothing.
var moveLeaseScript = redis.NewScript(`
local n = 0
for i = 2, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == tonumber(ARGV[i+1]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
`)

func (q *Queue) moveLeases(ctx context.Context, leases []Lease, to time.Time) (int, error) {
	if len(leases) == 0 {
		return 0, nil
	}
	args := make([]any, 0, 1+2*len(leases))
	args = append(args, to.UnixMilli())
	for _, l := range leases {
		args = append(args, l.ID, l.End.UnixMilli())
	}
	return moveLeaseScript.Run(ctx, q.rdb, []string{q.DueKey}, args...).Int()
}

// Release gives leases back at once (due at now), for a shard that stops
// with claims it never finished. A delivery whose outcome was written
// meanwhile keeps it.
func (q *Queue) Release(ctx context.Context, leases []Lease, now time.Time) error {
	if _, err := q.moveLeases(ctx, leases, now); err != nil {
		return fmt.Errorf("cannot release %d claimed deliveries of %s: %w", len(leases), q.Shard, err)
	}
	return nil
}

// Extend pushes leases still held to end, so an attempt that waits long
// behind its host is not claimed a second time. A delivery whose outcome
// was written meanwhile keeps its new due time.
func (q *Queue) Extend(ctx context.Context, leases []Lease, end time.Time) error {
	if _, err := q.moveLeases(ctx, leases, end); err != nil {
		return fmt.Errorf("cannot extend %d leases in %s: %w", len(leases), q.Shard, err)
	}
	return nil
}

// quarantineScript moves one record, bytes as they are, to the dead set.
var quarantineScript = redis.NewScript(`
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if raw then
  redis.call('HSET', KEYS[4], ARGV[1], raw)
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return raw and 1 or 0
`)

// Quarantine moves a record geckohook cannot read to the dead set as it is,
// for inspection, so it never blocks or loops the poller.
func (q *Queue) Quarantine(ctx context.Context, id string, at time.Time) error {
	if err := quarantineScript.Run(ctx, q.rdb, []string{q.DueKey, q.DataKey, q.DeadKey, q.DeadData}, id, at.UnixMilli()).Err(); err != nil {
		return fmt.Errorf("cannot move unreadable delivery %s of %s to the dead set: %w", id, q.Shard, err)
	}
	return nil
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
