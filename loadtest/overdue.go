package loadtest

// This file makes every delivery in geckohook's retry queues due at once,
// the outage scenario's fixture for measuring how fast geckohook takes
// overdue retries out. The retry schedule alone spreads the due times
// out at about the rate the failing pairs were offered, so at a load the
// deployment sustains it never leaves geckohook behind; a backlog of
// overdue retries is what geckohook meets after its dispatchers were down
// for a while.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/shard"
)

// overdueScript re-scores, in one shard, every scheduled delivery due
// after ARGV[2] to ARGV[2] (ms), and each webhook's earliest due time in
// KEYS[1] with it; ARGV[1] is the prefix of the webhooks' ZSETs. The keys
// are docs/retries.md's layout, all under the shard's hash tag. A member
// claimed by an attempt under way is re-scored too: geckohook keeps one
// attempt per delivery in flight, and a second claim only extends its
// lease. It returns how many members it moved.
var overdueScript = redis.NewScript(`
local n = 0
for _, hook in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. hook
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
  redis.call('ZADD', KEYS[1], ARGV[2], hook)
end
return n
`)

// makeOverdue makes every scheduled delivery of every registered shard
// due at at (at most: earlier ones keep their time) and returns how many
// it moved.
func makeOverdue(ctx context.Context, rdb redis.UniversalClient, store *shard.Store, at time.Time) (int64, error) {
	qs, err := store.Queues(ctx)
	if err != nil {
		return 0, err
	}
	ms := strconv.FormatInt(at.UnixMilli(), 10)
	var n int64
	for _, q := range qs {
		prefix := q.HookKey("")
		if !strings.HasSuffix(prefix, ":q:") {
			return n, fmt.Errorf("retry queue %s: unexpected key layout %q", q.Shard, prefix)
		}
		moved, err := overdueScript.Run(ctx, rdb, []string{q.HooksKey}, prefix, ms).Int64()
		if err != nil {
			return n, fmt.Errorf("cannot make the retries of %s due: %w", q.Shard, err)
		}
		n += moved
	}
	return n, nil
}
