package shard

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lease is a claim this process holds: the score the claim (or its last
// extension) gave the delivery.
type Lease struct {
	ID                  string
	End                 time.Time
	hook, chunk, member string
}

func (q *Queue) moveLeases(ctx context.Context, leases []Lease, to time.Time) (int, error) {
	if len(leases) == 0 {
		return 0, nil
	}
	args := make([]any, 0, 2+4*len(leases))
	args = append(args, to.UnixMilli(), q.tag)
	for _, l := range leases {
		if l.member != "" && l.chunk != "" {
			args = append(args, l.hook, l.chunk, l.member, l.End.UnixMilli())
		}
	}
	return moveScript.Run(ctx, q.rdb, []string{q.ChunksKey}, args...).Int()
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

// moveScript re-scores members of webhook chunks: ARGV[1] the new score,
// ARGV[2] the key tag, then (webhook, chunk, member, expected score)
// quadruples; a member moves only if its score is still the expected one
// (-1: any).
var moveScript = redis.NewScript(`
local n = 0
for i = 3, #ARGV, 4 do
  local chunk = ARGV[i] .. ':' .. ARGV[i+1]
  local key = ARGV[2] .. ':q:' .. chunk
  local s = redis.call('ZSCORE', key, ARGV[i+2])
  if s and (ARGV[i+3] == '-1' or tonumber(s) == tonumber(ARGV[i+3])) then
    redis.call('ZADD', key, ARGV[1], ARGV[i+2])
    redis.call('ZADD', KEYS[1], 'LT', ARGV[1], chunk)
    redis.call('ZADD', ARGV[2] .. ':qh', 'LT', ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
`)

// RetryNow makes a scheduled delivery due at now. It reports false when the
// record is no longer scheduled as it was read.
func (q *Queue) RetryNow(ctx context.Context, rec *Record, now time.Time) (bool, error) {
	if rec.member == "" || rec.chunk == "" {
		return false, nil
	}
	n, err := moveScript.Run(ctx, q.rdb, []string{q.ChunksKey}, now.UnixMilli(), q.tag, rec.WebhookID, rec.chunk, rec.member, -1).Int()
	if err != nil {
		return false, fmt.Errorf("cannot make delivery %s due: %w", rec.ID, err)
	}
	return n == 1, nil
}
