package registry

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// scanCount is the COUNT of each HSCAN of a full load: pages of a few
// thousand webhooks keep Redis answering other clients between pages and
// the load's garbage small, and let pages decode while the next is read.
const scanCount = 4096

// Reload replaces the in-memory copy with what Redis holds.
//
// Webhooks are read page by page (HSCAN), not in one atomic HGETALL: a
// webhook written or deleted while the pages are read may or may not be in
// them, but its announcement, which follows its write, is applied after
// the reload (announcements wait while the follower reloads), so the copy
// ends up right either way.
func (r *Registry) Reload(ctx context.Context) error {
	start := time.Now()
	rawApps, err := r.rdb.HGetAll(ctx, r.appsKey).Result()
	if err != nil {
		return fmt.Errorf("cannot load applications: %w", err)
	}
	apps := make(map[string]*App, len(rawApps))
	for id, raw := range rawApps {
		a, err := r.decodeApp([]byte(raw))
		if err != nil {
			r.opts.Log.Error().Err(err).Str("app_id", id).Msg("skipping unreadable application record")
			continue
		}
		apps[id] = a
	}
	batches, err := r.loadWebhooks(ctx)
	if err != nil {
		return err
	}
	x := buildIndex(apps, batches)
	r.mu.Lock()
	r.index = x
	r.version.Add(1)
	r.mu.Unlock()
	r.lastLoad.Store(int64(time.Since(start)))
	r.reloads.Add(1)
	return nil
}

// LastLoad is how long the last full load took.
func (r *Registry) LastLoad() time.Duration { return time.Duration(r.lastLoad.Load()) }

// loadWebhooks reads every webhook record: one goroutine pages through the
// hash while one decoder per core turns pages into webhooks.
func (r *Registry) loadWebhooks(ctx context.Context) ([][]Webhook, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make(chan []string, runtime.GOMAXPROCS(0))
	var scanErr error
	go func() {
		defer close(pages)
		var cursor uint64
		for {
			kv, next, err := r.rdb.HScan(ctx, r.hooksKey, cursor, "", scanCount).Result()
			if err != nil {
				scanErr = fmt.Errorf("cannot load webhooks: %w", err)
				return
			}
			select {
			case pages <- kv:
			case <-ctx.Done():
				scanErr = ctx.Err()
				return
			}
			if cursor = next; cursor == 0 {
				return
			}
		}
	}()
	var (
		mu      sync.Mutex
		batches [][]Webhook
		wg      sync.WaitGroup
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			d := newBatchDecoder()
			var raws []string
			for kv := range pages {
				raws = raws[:0]
				for i := 1; i < len(kv); i += 2 {
					raws = append(raws, kv[i])
				}
				hooks, bad := d.decode(raws)
				for _, i := range bad {
					r.opts.Log.Error().Str("webhook_id", kv[2*i]).Msg("skipping unreadable webhook record")
				}
				mu.Lock()
				batches = append(batches, hooks)
				mu.Unlock()
			}
		})
	}
	wg.Wait() // pages is closed once the scanner returned: scanErr is set
	if scanErr != nil {
		return nil, scanErr
	}
	return batches, nil
}
