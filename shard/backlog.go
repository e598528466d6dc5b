package shard

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

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
	due := make([]*redis.IntCmd, len(qs))
	_, err = st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, q := range qs {
			due[i] = p.ZCount(ctx, q.DueKey, "-inf", max)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cannot count the due deliveries: %w", err)
	}
	var n int64
	for _, c := range due {
		n += c.Val()
	}
	return n, nil
}
