package registry

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// importBatch is how many webhooks one HSET of Import carries; importDepth
// is how many such commands one pipeline sends.
const (
	importBatch = 1000
	importDepth = 16
)

// Import stores many webhooks at once (each needs its ID, CreatedAt and
// AppID set by the caller) in pipelined multi-field HSETs, without
// announcing them: processes started afterwards load them, and
// AnnounceReload makes running ones reload in a single pass. It is for
// bulk loads (migrations, benchmarks): per-webhook announcements of a
// million webhooks would cost each process a million updates.
func (r *Registry) Import(ctx context.Context, hooks []Webhook) error {
	for from := 0; from < len(hooks); {
		_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for d := 0; d < importDepth && from < len(hooks); d++ {
				to := min(from+importBatch, len(hooks))
				args := make([]any, 0, 2*(to-from))
				for i := from; i < to; i++ {
					raw, err := msgpack.Marshal(&hooks[i])
					if err != nil {
						return fmt.Errorf("cannot encode webhook %s: %w", hooks[i].ID, err)
					}
					args = append(args, hooks[i].ID, raw)
				}
				p.HSet(ctx, r.hooksKey, args...)
				from = to
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("cannot import webhooks: %w", err)
		}
	}
	return nil
}

// AnnounceReload asks every process to reload the whole registry.
func (r *Registry) AnnounceReload(ctx context.Context) error {
	payload, err := r.announcement(&change{Kind: 'r'})
	if err != nil {
		return err
	}
	if err := r.rdb.Publish(ctx, r.channel, payload).Err(); err != nil {
		return fmt.Errorf("cannot announce a registry reload: %w", err)
	}
	return nil
}
