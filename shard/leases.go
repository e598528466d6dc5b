package shard

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lease is a claim this process holds: the score the claim (or its last
// extension) gave the delivery. Pending is another score the delivery may
// hold, one a claim or an extension under way wrote (or may have written:
// its reply was lost) before the holder recorded it as End; zero when
// there is none. Extend, Release and Apply (through Op.Lease) act on the
// delivery only while it holds one of the two: a claimant whose lease ran
// out never touches what the next claimant holds.
type Lease struct {
	ID                  string
	End, Pending        time.Time
	hook, chunk, member string
}

// scores returns the lease's End and Pending as script arguments (ms;
// Pending "" when zero), boxed by bx.
func (l Lease) scores(bx *msBoxes) (end, pending any) {
	pending = ""
	if !l.Pending.IsZero() {
		pending = bx.box(l.Pending.UnixMilli())
	}
	return bx.box(l.End.UnixMilli()), pending
}

// msBoxes boxes times in ms as script arguments, reusing the last box for
// the same value: the leases of a batch mostly share their end, so a
// batch boxes it about once instead of once per delivery.
type msBoxes struct {
	last  int64
	boxed any
}

func (b *msBoxes) box(v int64) any {
	if b.boxed == nil || v != b.last {
		b.last, b.boxed = v, v
	}
	return b.boxed
}

// moveLeases re-scores the leases still held to to, and returns the
// indices in leases of those it moved.
func (q *Queue) moveLeases(ctx context.Context, leases []Lease, to time.Time) ([]int, error) {
	if len(leases) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 2+5*len(leases))
	args = append(args, to.UnixMilli(), q.tag)
	sent := make([]int, 0, len(leases)) // the index in leases of each quintuple
	var bx msBoxes
	for k, l := range leases {
		if l.member != "" && l.chunk != "" {
			end, pending := l.scores(&bx)
			args = append(args, l.hook, l.chunk, l.member, end, pending)
			sent = append(sent, k)
		}
	}
	nums, err := moveScript.Run(ctx, q.rdb, []string{q.ChunksKey}, args...).Int64Slice()
	if err != nil {
		return nil, err
	}
	moved := make([]int, 0, len(nums))
	for _, j := range nums {
		moved = append(moved, sent[j])
	}
	return moved, nil
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
	_, err := q.ExtendHeld(ctx, leases, end)
	return err
}

// ExtendHeld is Extend, and returns the indices in leases of those it
// extended: a lease not among them is not held at end (its delivery was
// claimed by another process once the lease ran out, made due, or its
// outcome written), and an outcome under it must not count on end.
func (q *Queue) ExtendHeld(ctx context.Context, leases []Lease, end time.Time) ([]int, error) {
	moved, err := q.moveLeases(ctx, leases, end)
	if err != nil {
		return nil, fmt.Errorf("cannot extend %d leases in %s: %w", len(leases), q.Shard, err)
	}
	return moved, nil
}

// moveScript re-scores members of webhook chunks: ARGV[1] the new score,
// ARGV[2] the key tag, then (webhook, chunk, member, expected score,
// other expected score or "") quintuples; a member moves only if its
// score is still one of the expected ones (-1: any). It returns the
// (0-based) numbers of the quintuples whose member moved.
var moveScript = redis.NewScript(`
local moved, n = {}, 0
for i = 3, #ARGV, 5 do
  local chunk = ARGV[i] .. ':' .. ARGV[i+1]
  local key = ARGV[2] .. ':q:' .. chunk
  local s = redis.call('ZSCORE', key, ARGV[i+2])
  if s and (ARGV[i+3] == '-1' or tonumber(s) == tonumber(ARGV[i+3]) or (ARGV[i+4] ~= '' and tonumber(s) == tonumber(ARGV[i+4]))) then
    redis.call('ZADD', key, ARGV[1], ARGV[i+2])
    redis.call('ZADD', KEYS[1], 'LT', ARGV[1], chunk)
    redis.call('ZADD', ARGV[2] .. ':qh', 'LT', ARGV[1], ARGV[i])
    moved[#moved+1] = n
  end
  n = n + 1
end
return moved
`)

// RetryNow makes a scheduled delivery due at now. It reports false when the
// record is no longer scheduled as it was read. A delivery still in a
// layout before chunks (Store.Find finds it there) is migrated first, as
// the shard's next migration would, and rec then names its chunk.
func (q *Queue) RetryNow(ctx context.Context, rec *Record, now time.Time) (bool, error) {
	if rec.chunk == "" {
		if err := q.migrateDelivery(ctx, rec, now); err != nil {
			return false, fmt.Errorf("cannot make delivery %s due: %w", rec.ID, err)
		}
		cur, _, err := q.Get(ctx, rec.ID)
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("cannot make delivery %s due: %w", rec.ID, err)
		}
		if cur.WebhookID != rec.WebhookID {
			return false, nil
		}
		rec.member, rec.chunk = cur.member, cur.chunk
	}
	if rec.member == "" || rec.chunk == "" {
		return false, nil
	}
	moved, err := moveScript.Run(ctx, q.rdb, []string{q.ChunksKey}, now.UnixMilli(), q.tag, rec.WebhookID, rec.chunk, rec.member, -1, "").Int64Slice()
	if err != nil {
		return false, fmt.Errorf("cannot make delivery %s due: %w", rec.ID, err)
	}
	return len(moved) == 1, nil
}

// dueByScript re-scores every member of the shard's chunks (KEYS[1])
// scored after ARGV[2] to ARGV[2] (ms), and each chunk's earliest due time
// and its webhook's (tag:qh) with it; ARGV[1] is the shard's tag. It
// returns how many members moved.
var dueByScript = redis.NewScript(`
local n = 0
for _, chunk in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. ':q:' .. chunk
  local ms = redis.call('ZRANGEBYSCORE', key, '(' .. ARGV[2], '+inf')
  for i = 1, #ms, 500 do
    local args = {'XX'}
    for j = i, math.min(i + 499, #ms) do
      args[#args+1] = ARGV[2]
      args[#args+1] = ms[j]
    end
    redis.call('ZADD', key, unpack(args))
  end
  n = n + #ms
  if #ms > 0 then
    redis.call('ZADD', KEYS[1], 'LT', ARGV[2], chunk)
    redis.call('ZADD', ARGV[1] .. ':qh', 'LT', ARGV[2], string.match(chunk, '^(.*):[^:]*$'))
  end
end
return n
`)

// DueBy makes every scheduled delivery of the queue due at at, at the
// latest (earlier ones keep their time), and returns how many it moved: a
// backlog of overdue retries at once, as after the dispatchers were down
// for a while (the capacity suite's outage scenario measures the drain
// with it). A delivery claimed by an attempt under way moves too; its
// claimant still holds it, and the claim that finds it again is the
// dispatcher's own, which only extends the lease. One script: for large
// queues, call it while Redis may be busy for a moment.
func (q *Queue) DueBy(ctx context.Context, at time.Time) (int64, error) {
	n, err := dueByScript.Run(ctx, q.rdb, []string{q.ChunksKey}, q.tag, at.UnixMilli()).Int64()
	if err != nil {
		return 0, fmt.Errorf("cannot make the retries of %s due: %w", q.Shard, err)
	}
	return n, nil
}

// DueBy makes every scheduled delivery of every shard's queue due at at,
// at the latest (Queue.DueBy), and returns how many it moved.
func (st *Store) DueBy(ctx context.Context, at time.Time) (int64, error) {
	qs, err := st.Queues(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, q := range qs {
		moved, err := q.DueBy(ctx, at)
		if err != nil {
			return n, err
		}
		n += moved
	}
	return n, nil
}
