package shard

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// dueScript counts the deliveries due by ARGV[2] in the chunks of a
// shard whose earliest due time (KEYS[1], never later than the truth)
// has come.
var dueScript = redis.NewScript(`
local n = 0
for _, chunk in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])) do
  n = n + redis.call('ZCOUNT', ARGV[1] .. ':q:' .. chunk, '-inf', ARGV[2])
end
return n
`)

// DueBacklog returns how many scheduled deliveries of every registered
// shard are due at now and not yet taken: a claimed delivery is re-scored
// to its lease end, so it is not counted while its attempt is under way.
// The capacity suite reads it to tell the seconds in which deliveries
// waited for geckohook from those in which they waited for their time.
func (st *Store) DueBacklog(ctx context.Context, now time.Time) (int64, error) {
	qs, err := st.Queues(ctx)
	if err != nil {
		return 0, err
	}
	max := strconv.FormatInt(now.UnixMilli(), 10)
	due := make([]*redis.Cmd, len(qs))
	_, err = st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range qs {
			due[i] = dueScript.Eval(ctx, p, []string{q.ChunksKey}, q.tag, max)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cannot count the due deliveries: %w", err)
	}
	var n int64
	for _, c := range due {
		v, _ := c.Int64()
		n += v
	}
	return n, nil
}
