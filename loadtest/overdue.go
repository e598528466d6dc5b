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
	"time"

	"github.com/geckohook/geckohook/shard"
)

// makeOverdue makes every scheduled delivery of every registered shard
// due at at (at most: earlier ones keep their time) and returns how many
// it moved.
func makeOverdue(ctx context.Context, store *shard.Store, at time.Time) (int64, error) {
	qs, err := store.Queues(ctx)
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
