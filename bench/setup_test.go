package bench

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/engine/registry"
)

// seededRegistry starts a registry on rdb holding one application and n
// webhooks, the i-th made by hook(i) (AppID is filled in).
func seededRegistry(b *testing.B, rdb redis.UniversalClient, n int, hook func(i int) registry.Webhook) *registry.Registry {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	reg := registry.New(rdb, registry.Options{ReloadEvery: -1})
	if err := reg.Start(ctx); err != nil {
		b.Fatal(err)
	}
	app, _, err := reg.CreateApp(ctx, "bench", "b@example.com")
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i++ {
		w := hook(i)
		w.AppID = app.ID
		if _, err := reg.CreateWebhook(ctx, w); err != nil {
			b.Fatal(err)
		}
	}
	return reg
}
