package shard

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// Record is one delivery waiting for a retry (or dead). A scheduled one is
// stored as a compact member of its webhook's ZSET (member.go); a dead one
// msgpack-encoded in the shard's dead hash. It holds everything a re-send
// needs except the address and secret, which are looked up in the
// registry at send time.
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
	RetryAfter bool `msgpack:"retry_after,omitempty"`
	// FirstAttempt and LastAttempt are kept to the millisecond.
	FirstAttempt time.Time `msgpack:"first_attempt"`
	LastAttempt  time.Time `msgpack:"last_attempt"`
	LastStatus   int       `msgpack:"last_status"`
	LastError    string    `msgpack:"last_error"`
	Topic        string    `msgpack:"topic"`
	Partition    int32     `msgpack:"partition"`
	Offset       int64     `msgpack:"offset"`

	// member is the record's ZSET member as read from Redis (empty for a
	// record not read from the scheduled set), and chunk the number of
	// the webhook's chunk that holds it: changes replace it only if it
	// is still there.
	member, chunk string
	// lease is the lease end (ms) the claim that read the record gave
	// it, 0 for a record not read by a claim: Apply's default Op.Lease.
	lease  int64
	packed *packing
	// noMeta: the claim found no application and account for the
	// webhook (a claim of the version before chunks drops them when it
	// finds the webhook's sorted set of that layout empty, during a
	// rolling upgrade); Apply restores them from the record.
	noMeta bool
}

// Lease returns the lease on a claimed record until end (the claim's
// lease end, or a later one an extension gave it).
func (r *Record) Lease(end time.Time) Lease {
	return Lease{ID: r.ID, End: end, hook: r.WebhookID, chunk: r.chunk, member: r.member}
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
// slots. Scheduled deliveries (docs/retries.md has the layout; chunks.go
// how a webhook's deliveries are split into chunks):
//
//	tag:q:<webhook>:<n>  ZSET  compact record -> due time (ms; lease end while claimed), at most 128
//	tag:chunks           ZSET  <webhook>:<n> -> earliest due time of the chunk (never later)
//	tag:qh               ZSET  webhook -> earliest due time of its chunks (never later)
//	tag:qn               HASH  webhook -> chunk being filled, number of chunks, highest in use
//	tag:i:<xx>           HASH  packed delivery id -> webhook, offset and chunk (256 buckets)
//	tag:hm               HASH  webhook -> application and account (while it has chunks)
//	tag:bf               HASH  body form reference -> event and resource URL prefix
//
// Dead deliveries: tag:dead (ZSET id -> died, ms), tag:dead:d (HASH id ->
// msgpack Record), tag:wd:<webhook> (ZSET id -> first attempt, ms).
type Queue struct {
	rdb       redis.UniversalClient
	Shard     string // "topic-partition", the hash tag's content
	ChunksKey string // ZSET <webhook>:<n> -> earliest due time of the chunk
	DeadKey   string // ZSET delivery id -> time it died (ms)
	DeadData  string // HASH delivery id -> msgpack Record
	metaKey   string
	formsKey  string
	statesKey string
	tag       string
	topic     string
	partition int
	// formsInUse is how many body forms were in use at the last sweep
	// of unused ones (dropUnusedForms).
	formsInUse atomic.Int64
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
	q := &Queue{rdb: rdb, Shard: shard, tag: tag, ChunksKey: tag + ":chunks", DeadKey: tag + ":dead", DeadData: tag + ":dead:d",
		metaKey: tag + ":hm", formsKey: tag + ":bf", statesKey: tag + ":qn", topic: shard}
	if i := strings.LastIndexByte(shard, '-'); i >= 0 {
		if p, err := strconv.Atoi(shard[i+1:]); err == nil {
			q.topic, q.partition = shard[:i], p
		}
	}
	return q
}

func (q *Queue) indexKey(packed string) string       { return q.tag + ":i:" + indexBucket(packed) }
func (q *Queue) deadHookKey(webhookID string) string { return q.tag + ":wd:" + webhookID }

func ms(t time.Time) float64 { return float64(t.UnixMilli()) }

// storeFormsLua is the part of a script that stores count body forms in
// the hash formsKey, given as (reference, form) pairs from ARGV[i] on,
// and leaves i after them. A reference never names two forms.
func storeFormsLua(formsKey, count string) string {
	return `for k = 1, tonumber(` + count + `) do
  local ref, v = ARGV[i], ARGV[i+1]
  i = i + 2
  if redis.call('HSETNX', ` + formsKey + `, ref, v) == 0 and redis.call('HGET', ` + formsKey + `, ref) ~= v then
    return redis.error_reply('body form reference collision')
  end
end`
}

// scheduleScript stores new deliveries if absent: ARGV[1] the key tag,
// ARGV[2] the number of body forms, then (reference, form) pairs, then per
// delivery its index bucket, packed id, index value (without its chunk),
// webhook, member, due score and webhook metadata. A delivery already in
// the id index keeps its record. It returns how many it stored.
var scheduleScript = redis.NewScript(`
local tag, i = ARGV[1], 3
` + chunkLua + storeFormsLua("KEYS[3]", "ARGV[2]") + `
local added, metas = 0, {}
while i <= #ARGV do
  local bucket, id, ix, hook, member, score, meta = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6]
  i = i + 7
  if redis.call('HSETNX', tag .. ':i:' .. bucket, id, ix .. target(hook)) == 1 then
    add(hook, member, score)
    metas[hook] = meta
    added = added + 1
  end
end
saveStates()
for hook, meta in pairs(metas) do redis.call('HSET', KEYS[2], hook, meta) end
return added
`)

// scheduleBatch is scheduleScript's arguments for a batch of records:
// the body forms they refer to, as (reference, form) pairs, and per
// record its scheduleWidth values.
type scheduleBatch struct {
	forms []any
	rows  []any
}

// scheduleWidth is how many values scheduleScript takes per record.
const scheduleWidth = 7

// row returns the values of the i-th record.
func (b scheduleBatch) row(i int) []any { return b.rows[scheduleWidth*i : scheduleWidth*(i+1)] }

// args returns scheduleScript's ARGV.
func (b scheduleBatch) args(tag string) []any {
	args := make([]any, 0, 2+len(b.forms)+len(b.rows))
	args = append(args, tag, len(b.forms)/2)
	args = append(args, b.forms...)
	return append(args, b.rows...)
}

// cacheForms caches the batch's body forms once Redis holds them.
func (b scheduleBatch) cacheForms() {
	for i := 0; i+1 < len(b.forms); i += 2 {
		cacheForm(b.forms[i].(string), b.forms[i+1].(string))
	}
}

// scheduleArgs builds scheduleScript's arguments for recs due at scores.
func (q *Queue) scheduleArgs(recs []*Record, scores []float64) scheduleBatch {
	var b scheduleBatch
	seen := map[string]bool{}
	b.rows = make([]any, 0, scheduleWidth*len(recs))
	for i, rec := range recs {
		member, form := q.memberOf(rec)
		if form != nil {
			if ref := form.ref(); !seen[ref] {
				seen[ref] = true
				b.forms = append(b.forms, ref, form.value())
			}
		}
		pid := packedID(rec.ID)
		b.rows = append(b.rows, bucketArg(pid), pid, indexValue(rec), rec.WebhookID, member, scores[i],
			hookMeta{rec.AppID, rec.AccountID}.value())
	}
	return b
}

// schedule stores recs due at scores if absent (scheduleScript), and
// caches their body forms once Redis holds them.
func (q *Queue) schedule(ctx context.Context, recs []*Record, scores []float64) error {
	b := q.scheduleArgs(recs, scores)
	if err := scheduleScript.Run(ctx, q.rdb, []string{q.ChunksKey, q.metaKey, q.formsKey}, b.args(q.tag)...).Err(); err != nil {
		return err
	}
	b.cacheForms()
	return nil
}

// Schedule stores entries in one round trip. It is an insert if absent: a
// delivery replayed after a crash keeps the record (attempt count, due
// time) it already has, so a replay never creates a second record.
func (q *Queue) Schedule(ctx context.Context, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	var live []*Record
	var scores []float64
	var dead []Entry
	for _, e := range entries {
		if e.Dead {
			dead = append(dead, e)
			continue
		}
		live = append(live, e.Rec)
		scores = append(scores, ms(e.Due))
	}
	if len(live) > 0 {
		if err := q.schedule(ctx, live, scores); err != nil {
			return fmt.Errorf("cannot schedule %d deliveries in %s: %w", len(live), q.Shard, err)
		}
	}
	if len(dead) == 0 {
		return nil
	}
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range dead {
			raw, err := msgpack.Marshal(e.Rec)
			if err != nil {
				return fmt.Errorf("cannot encode delivery %s: %w", e.Rec.ID, err)
			}
			p.HSetNX(ctx, q.DeadData, e.Rec.ID, raw)
			p.ZAddNX(ctx, q.DeadKey, redis.Z{Score: ms(e.Due), Member: e.Rec.ID})
			p.ZAddNX(ctx, q.deadHookKey(e.Rec.WebhookID), redis.Z{Score: ms(e.Rec.FirstAttempt), Member: e.Rec.ID})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot store %d dead deliveries in %s: %w", len(dead), q.Shard, err)
	}
	return nil
}

// claimScript takes up to ARGV[3] members due at ARGV[1], webhook by
// webhook in the order of their earliest due chunk, each webhook at most
// an equal share of the claim (so the retries of several webhooks, often
// on several hosts, go out together, as they fall due) and its earliest
// first, and re-scores them to the lease end ARGV[2], so a process that
// dies mid-attempt gives them back when the lease runs out. The webhooks
// are those of the first 4 × ARGV[3] chunks due, then those of the first
// ARGV[3] due in the webhook index (tag:qh) that these chunks left out
// (another webhook's due chunks filled them), whose chunks it lists.
// Each chunk it reads gets its exact earliest due time in KEYS[1] again
// (or leaves it, when empty), and each webhook it takes from a lower
// bound of its earliest in tag:qh; a shard with nothing scheduled, in
// this layout or the one before chunks (KEYS[4], which holds nothing but
// the mark of chunks.go then), drops its body forms (KEYS[3]), which
// only scheduled members refer to. It returns (webhook, metadata,
// (chunk, member) pairs) triples and the earliest due time left.
var claimScript = redis.NewScript(`
local tag, now, leaseEnd, n = ARGV[4], ARGV[1], ARGV[2], tonumber(ARGV[3])
` + chunkLua + `
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, 4 * n)
-- Every chunk the window left out is due at bound or later.
local bound = tonumber(now) + 1
if #due == 8 * n then bound = tonumber(due[#due]) end
local order, byHook, all = {}, {}, {}
for i = 1, #due, 2 do
  local hook, c = splitChunk(due[i])
  if hook then
    if not byHook[hook] then
      byHook[hook] = {}
      order[#order+1] = hook
    end
    local l = byHook[hook]
    l[#l+1] = {c = c, min = tonumber(due[i+1])}
  else
    redis.call('ZREM', KEYS[1], due[i])
  end
end
for _, hook in ipairs(redis.call('ZRANGEBYSCORE', tag .. ':qh', '-inf', now, 'LIMIT', 0, n)) do
  if not byHook[hook] then
    byHook[hook] = false -- its chunks are listed when its turn comes
    order[#order+1] = hook
  end
end
local out, left = {}, n
local share = math.max(1, math.ceil(n / math.max(1, #order)))
-- A claim visits at most n webhooks that have a delivery due; what it
-- writes to the indexes goes out in one command each at the end.
local visit = {}
for k = 1, math.min(#order, n) do visit[k] = order[k] end
readStates(visit)
local chunkMins, chunksGone, hookMins, hooksGone = {}, {}, {}, {}
local function flush(cmd, key, args)
  for k = 1, #args, 500 do
    redis.call(cmd, key, unpack(args, k, math.min(k + 499, #args)))
  end
end
for _, hook in ipairs(order) do
  if left <= 0 then break end
  local chunks = byHook[hook]
  if not chunks then
    all[hook], chunks = hookChunks(hook), {}
    for _, ch in ipairs(all[hook]) do
      if ch.min <= tonumber(now) then chunks[#chunks+1] = ch end
    end
  end
  local cand = earliest(hook, chunks, math.min(share, left), now)
  if #cand > 0 then
    local lease, got = {}, {}
    for _, x in ipairs(cand) do
      local l = lease[x.c]
      if not l then
        l = {'XX'}
        lease[x.c] = l
      end
      l[#l+1] = leaseEnd
      l[#l+1] = x.m
      got[#got+1] = tostring(x.c) -- a number when hookChunks listed it
      got[#got+1] = x.m
    end
    for c, l in pairs(lease) do redis.call('ZADD', qkey(hook, c), unpack(l)) end
    out[#out+1] = hook
    out[#out+1] = '' -- its metadata, read for every webhook at the end
    out[#out+1] = got
    left = left - #cand
  end
  for _, ch in ipairs(chunks) do
    if ch.looked then
      local first = redis.call('ZRANGE', qkey(hook, ch.c), 0, 0, 'WITHSCORES')
      if first[2] then
        chunkMins[#chunkMins+1] = first[2]
        chunkMins[#chunkMins+1] = hook .. ':' .. ch.c
        ch.min = tonumber(first[2])
      else
        chunksGone[#chunksGone+1] = hook .. ':' .. ch.c
        ch.min = math.huge
      end
    end
  end
  -- Its chunks outside the window are due at bound or later; a listed
  -- webhook's are all known, as are those of one the window holds whole.
  local low = bound
  if all[hook] or #chunks == state(hook).l then low = math.huge end
  for _, ch in ipairs(all[hook] or chunks) do
    if ch.min < low then low = ch.min end
  end
  if state(hook).l == 0 then
    hooksGone[#hooksGone+1] = hook -- left by a lost state
  elseif low < math.huge then
    hookMins[#hookMins+1] = low
    hookMins[#hookMins+1] = hook
  end
end
flush('ZADD', KEYS[1], chunkMins)
flush('ZREM', KEYS[1], chunksGone)
flush('ZADD', tag .. ':qh', hookMins)
flush('ZREM', tag .. ':qh', hooksGone)
if #out > 0 then
  local hooks = {}
  for k = 1, #out, 3 do hooks[#hooks+1] = out[k] end
  local metas = redis.call('HMGET', KEYS[2], unpack(hooks))
  for k = 1, #hooks do out[3*k-1] = metas[k] or '' end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not first[2] then
  local unchunked = redis.call('ZRANGE', KEYS[4], 0, 0)
  if not unchunked[1] or unchunked[1] == '' then redis.call('DEL', KEYS[3]) end
end
return {out, first[2] or ''}
`)

// Claim leases up to n deliveries due at now until leaseEnd and returns their
// records, the members it could not decode (for Quarantine), and when the
// earliest delivery left is due (zero when none is). A Redis error while
// decoding fails the claim instead: its members come back when the lease
// ends, and none is taken for unreadable.
func (q *Queue) Claim(ctx context.Context, now, leaseEnd time.Time, n int) (recs []*Record, bad []Bad, next time.Time, err error) {
	res, err := claimScript.Run(ctx, q.rdb, []string{q.ChunksKey, q.metaKey, q.formsKey, q.oldHooksKey()},
		now.UnixMilli(), leaseEnd.UnixMilli(), n, q.tag).Slice()
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("cannot claim due deliveries of %s: %w", q.Shard, err)
	}
	if len(res) != 2 {
		return nil, nil, time.Time{}, fmt.Errorf("cannot claim due deliveries of %s: unexpected reply %v", q.Shard, res)
	}
	groups, _ := res[0].([]any)
	for i := 0; i+2 < len(groups); i += 3 {
		hook, _ := groups[i].(string)
		meta, _ := groups[i+1].(string)
		members, _ := groups[i+2].([]any)
		hm := parseMeta(meta)
		for j := 0; j+1 < len(members); j += 2 {
			chunk, _ := members[j].(string)
			member, _ := members[j+1].(string)
			rec, err := q.decode(ctx, member, hook, hm)
			if err != nil && !unreadable(err) {
				// Redis did not answer a body form lookup: the member
				// is fine and comes back when its lease ends, like
				// every member of this claim.
				return nil, nil, time.Time{}, fmt.Errorf("cannot claim due deliveries of %s: %w", q.Shard, err)
			}
			if err != nil {
				bad = append(bad, q.badMember(hook, chunk, member))
				continue
			}
			rec.chunk, rec.noMeta, rec.lease = chunk, meta == "", leaseEnd.UnixMilli()
			recs = append(recs, rec)
		}
	}
	if s, _ := res[1].(string); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			next = time.UnixMilli(int64(f))
		}
	}
	return recs, bad, next, nil
}

// forms caches body forms by reference. A reference is a hash of its form
// and a shard never stores two forms under one, so entries never change.
// Producers that put an account or other id in the resource path make
// forms without end: past maxCachedForms the cache starts again empty (a
// miss reads the form from the shard).
var (
	forms     sync.Map // reference -> bodyForm
	formsSize atomic.Int64
)

const maxCachedForms = 1 << 16

func cacheForm(ref, value string) {
	if _, ok := forms.Load(ref); ok {
		return
	}
	if f, ok := parseForm(value); ok {
		if formsSize.Add(1) > maxCachedForms {
			forms.Clear()
			formsSize.Store(1)
		}
		forms.Store(ref, f)
	}
}

// decode decodes a member of hook's ZSET, reading a body form it has not
// seen from the shard.
func (q *Queue) decode(ctx context.Context, member, hook string, meta hookMeta) (*Record, error) {
	var lookupErr error
	rec, err := q.decodeMember(member, hook, func(ref string) (bodyForm, bool) {
		if f, ok := forms.Load(ref); ok {
			return f.(bodyForm), true
		}
		v, err := q.rdb.HGet(ctx, q.formsKey, ref).Result()
		if err != nil {
			lookupErr = err
			return bodyForm{}, false
		}
		cacheForm(ref, v)
		f, ok := forms.Load(ref)
		if !ok {
			return bodyForm{}, false
		}
		return f.(bodyForm), true
	}, meta)
	if lookupErr != nil && !errors.Is(lookupErr, redis.Nil) {
		return nil, fmt.Errorf("cannot read a body form of %s: %w", q.Shard, lookupErr)
	}
	return rec, err
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
	// Lease is the claimant's lease on the delivery as it stands now
	// (extended, or claimed again by the same process, since the claim
	// that read Rec): the change applies only while the delivery is
	// scored at its Pending or no later than its End (made due since, by
	// retry-now, and not claimed again), so a claimant whose lease ran
	// out never overwrites what the next claimant holds, even when their
	// members are the same bytes. Zero: the lease end the claim that
	// read Rec gave it; a record not read by a claim (Get, Find) is
	// changed if its member is still there, whatever its score.
	Lease Lease
}

// applyScript carries out ops, twelve arguments each after ARGV[1], the
// key tag, ARGV[2], the number of body forms, and the (reference, form)
// pairs of the rescheduled records, stored first in the same step, then
// the number of webhooks whose metadata the claim found missing and their
// (webhook, metadata) pairs, restored (if the webhook still has chunks
// and no other process restored it) in the same step: kind, webhook, the
// chunk and member as claimed, index bucket, packed id, the claimant's
// lease end and pending lease end ("" for none), then for a reschedule
// the new member (in the same chunk) and its due score, for a kill the
// dead id, the time it died, its msgpack record and its first attempt. A
// change applies only if the claimed member is still there and, for a
// claimed one, scored at its claimant's pending lease end or no later
// than its lease end (a record not read from the scheduled set, with no
// member, is killed all the same): a later claim always scores it past
// the lease it took over, so a claimant whose lease ran out never
// overwrites the outcome of the one that claimed the delivery after it,
// nor the claim of one whose attempt is under way. A delivery made due
// while claimed (retry-now, DueBy) and not claimed again is still its
// claimant's: its outcome applies, and it is not sent twice. It returns
// the (0-based) numbers of the ops refused because their member is there
// under a score their lease does not hold.
var applyScript = redis.NewScript(`
local tag, i = ARGV[1], 3
` + chunkLua + storeFormsLua("KEYS[4]", "ARGV[2]") + `
local metas = {}
for k = 1, tonumber(ARGV[i]) do metas[ARGV[i+2*k-1]] = ARGV[i+2*k] end
i = i + 1 + 2 * tonumber(ARGV[i])
-- holds removes member m if its score is within the lease (e1, e2); its
-- second result says a score outside the lease kept it.
local function holds(key, m, e1, e2)
  if e1 ~= '' then
    local s = redis.call('ZSCORE', key, m)
    if not s then return false, false end
    s = tonumber(s)
    if s > tonumber(e1) and (e2 == '' or s ~= tonumber(e2)) then return false, true end
  end
  return redis.call('ZREM', key, m) == 1, false
end
local refused, n = {}, 0
local left = {} -- webhook -> chunks members left, each looked at once at the end
for i = i, #ARGV, 12 do
  local kind, hook, c, old, bucket, id = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  local key = c ~= '' and qkey(hook, c)
  local held, leased = false, false
  if old ~= '' and key then held, leased = holds(key, old, ARGV[i+6], ARGV[i+7]) end
  if leased then refused[#refused+1] = n end
  n = n + 1
  if kind == '2' then
    if held then
      redis.call('ZADD', key, ARGV[i+9], ARGV[i+8])
      lower(hook, c, ARGV[i+9])
    end
  else
    if held then
      redis.call('HDEL', tag .. ':i:' .. bucket, id)
      local l = left[hook]
      if not l then
        l = {}
        left[hook] = l
      end
      l[c] = true
    end
    if kind == '3' and (held or old == '') then
      redis.call('HSET', KEYS[3], ARGV[i+8], ARGV[i+10])
      redis.call('ZADD', KEYS[2], ARGV[i+9], ARGV[i+8])
      redis.call('ZADD', tag .. ':wd:' .. hook, ARGV[i+11], ARGV[i+8])
    end
  end
end
for hook, l in pairs(left) do
  for c in pairs(l) do removed(hook, c) end
end
saveStates()
for hook, meta in pairs(metas) do
  if redis.call('HEXISTS', tag .. ':qn', hook) == 1 then redis.call('HSETNX', tag .. ':hm', hook, meta) end
end
return refused
`)

// Apply makes the changes in one script (one round trip, atomic). A dead
// entry is written in the same step as the scheduled one is removed.
func (q *Queue) Apply(ctx context.Context, ops []Op) error {
	_, err := q.ApplyHeld(ctx, ops)
	return err
}

// ApplyHeld is Apply, and returns the indices in ops of the changes not
// made because their delivery is scored at what their lease does not
// hold: claimed since (by a claim or an extension the op's lease did not
// name yet, or by another process once the lease ran out). A refused
// op's record still names the member it claimed, so it can be applied
// again under the lease its claimant holds now.
func (q *Queue) ApplyHeld(ctx context.Context, ops []Op) (refused []int, err error) {
	if len(ops) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 2+12*len(ops))
	var formArgs, metaArgs []any
	sent, restored := map[string]bool{}, map[string]bool{}
	members := make([]string, len(ops))
	var bx msBoxes
	for k, op := range ops {
		rec := op.Rec
		if rec.member == "" {
			// Not read from the scheduled set (a caller that made the
			// record itself): change the one scheduled, if any.
			if cur, _, err := q.Get(ctx, rec.ID); err == nil && cur.WebhookID == rec.WebhookID {
				rec.member, rec.chunk = cur.member, cur.chunk
			}
		}
		if rec.noMeta && rec.AppID != "" && !restored[rec.WebhookID] {
			restored[rec.WebhookID] = true
			metaArgs = append(metaArgs, rec.WebhookID, hookMeta{rec.AppID, rec.AccountID}.value())
		}
		pid := packedID(rec.ID)
		end, pending := op.leaseScores(&bx)
		args = append(args, int(op.Kind), rec.WebhookID, rec.chunk, rec.member, bucketArg(pid), pid, end, pending)
		switch op.Kind {
		case OpRemove:
			args = append(args, "", "", "", "")
		case OpReschedule:
			member, form := q.memberOf(rec)
			if form != nil {
				if ref := form.ref(); !sent[ref] {
					sent[ref] = true
					formArgs = append(formArgs, ref, form.value())
				}
			}
			members[k] = member
			args = append(args, member, ms(op.At), "", "")
		case OpKill:
			raw, err := msgpack.Marshal(rec)
			if err != nil {
				return nil, fmt.Errorf("cannot encode delivery %s: %w", rec.ID, err)
			}
			args = append(args, rec.ID, ms(op.At), raw, ms(rec.FirstAttempt))
		default:
			return nil, fmt.Errorf("unknown retry queue operation %d", op.Kind)
		}
	}
	// Every rescheduled record's body form goes with it (HSETNX): the
	// process's cache spans every shard, so a form it knows may be missing
	// from this one (a record made elsewhere, or forms dropped while the
	// shard was empty), and a member must never name a form its shard lacks.
	head := append([]any{q.tag, len(formArgs) / 2}, formArgs...)
	head = append(append(head, len(metaArgs)/2), metaArgs...)
	args = append(head, args...)
	nums, err := applyScript.Run(ctx, q.rdb, []string{q.ChunksKey, q.DeadKey, q.DeadData, q.formsKey}, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("cannot update %d deliveries in %s: %w", len(ops), q.Shard, err)
	}
	for i := 0; i+1 < len(formArgs); i += 2 {
		cacheForm(formArgs[i].(string), formArgs[i+1].(string))
	}
	for _, k := range nums {
		refused = append(refused, int(k)) // ascending, each < len(ops)
	}
	next := 0 // the next refused op: it keeps its member and lease
	for k, op := range ops {
		if next < len(refused) && refused[next] == k {
			next++
			continue
		}
		if op.Kind == OpReschedule {
			op.Rec.member = members[k]
		}
		op.Rec.lease = 0 // its score is its due time now, or it is gone
	}
	return refused, nil
}

// leaseScores returns the lease ends the op's change requires of the
// delivery's score, as applyScript's arguments ("" for none), boxed by bx.
func (op Op) leaseScores(bx *msBoxes) (end, pending any) {
	switch {
	case !op.Lease.End.IsZero():
		return op.Lease.scores(bx)
	case op.Rec.lease != 0:
		return bx.box(op.Rec.lease), ""
	}
	return "", ""
}

// ErrNotFound: no such delivery in this queue.
var ErrNotFound = errors.New("delivery not found")

// lenScript counts the members of every chunk of a shard.
var lenScript = redis.NewScript(`
local n = 0
for _, chunk in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  n = n + redis.call('ZCARD', ARGV[1] .. ':q:' .. chunk)
end
return n
`)

// Len returns how many deliveries are scheduled.
func (q *Queue) Len(ctx context.Context) (int64, error) {
	return lenScript.Run(ctx, q.rdb, []string{q.ChunksKey}, q.tag).Int64()
}

// DeadLen returns how many deliveries are dead.
func (q *Queue) DeadLen(ctx context.Context) (int64, error) {
	return q.rdb.ZCard(ctx, q.DeadKey).Result()
}
