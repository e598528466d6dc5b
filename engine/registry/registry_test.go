package registry

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/internal/testenv"
)

func TestRegistryFollowsChangesAcrossProcesses(t *testing.T) {
	srv := testenv.Redis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := New(srv.Client(), Options{})
	b := New(srv.Client(), Options{})
	for _, r := range []*Registry{a, b} {
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}

	app, token, err := a.CreateApp(ctx, "shop", "dev@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got := a.AppByToken(token); got == nil || got.ID != app.ID || a.AppByToken(token+"x") != nil {
		t.Fatal("token lookup on the writing process is wrong")
	}
	w, err := a.CreateWebhook(ctx, Webhook{AppID: app.ID, AccountID: "acc1", Event: "order.create", Address: "https://x.test/h"})
	if err != nil {
		t.Fatal(err)
	}
	// The writer reads its own write at once.
	if got := matchHooks(a, "acc1", "order.create"); len(got) != 1 || got[0].ID != w.ID {
		t.Fatalf("writer Match = %v", got)
	}
	// The other process follows through the channel.
	testenv.WaitFor(t, 5*time.Second, func() error {
		if got := matchHooks(b, "acc1", "order.create"); len(got) != 1 || got[0].ID != w.ID {
			return fmt.Errorf("follower Match = %v", got)
		}
		if b.AppByToken(token) == nil || b.App(app.ID).Signer() == nil {
			return errors.New("follower does not know the application")
		}
		return nil
	})
	if len(matchHooks(b, "acc1", "order.update")) != 0 || len(matchHooks(b, "acc2", "order.create")) != 0 {
		t.Fatal("Match must be by exact account and event")
	}

	if err := b.DeleteWebhook(ctx, w.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteWebhook(ctx, w.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := len(matchHooks(a, "acc1", "order.create")); n != 0 {
			return fmt.Errorf("deleted webhook still matched %d times", n)
		}
		return nil
	})
}

func TestRegistryReloadsAfterLostSubscription(t *testing.T) {
	srv := testenv.Redis(t)
	rdb := srv.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := New(srv.Client(), Options{})
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	before := r.Reloads()
	// A write that was never announced (as if the announcement was missed).
	raw, _ := msgpack.Marshal(&Webhook{ID: "wh_silent", AppID: "app_1", AccountID: "acc", Event: "order.create", Address: "https://x.test"})
	if err := rdb.HSet(ctx, "gh:webhooks", "wh_silent", raw).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if r.Reloads() == before || r.Webhook("wh_silent") == nil {
			return fmt.Errorf("no reload after reconnect (reloads %d)", r.Reloads())
		}
		return nil
	})
	if got := r.Webhooks("app_1", ""); len(got) != 1 || got[0].ID != "wh_silent" {
		t.Fatalf("Webhooks(app_1) = %v", got)
	}
	if got := r.Webhooks("app_1", "other"); len(got) != 0 {
		t.Fatalf("Webhooks filtered by another account = %v", got)
	}
}

func TestWebhookHost(t *testing.T) {
	f := func(addr, want string) {
		t.Helper()
		w := &Webhook{Address: addr}
		w.prepare()
		if w.Host() != want {
			t.Errorf("Host(%q) = %q, want %q", addr, w.Host(), want)
		}
	}
	f("https://Example.com/hooks", "example.com:443")
	f("http://example.com/hooks", "example.com:80")
	f("http://127.0.0.1:9999/x", "127.0.0.1:9999")
	f("https://[::1]:8443/x", "[::1]:8443")
}

// Every announced change tells the follower how long it took to arrive,
// by the announcing and the applying processes' clocks.
func TestRegistryReportsChangeDelay(t *testing.T) {
	srv := testenv.Redis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	delays := make(chan time.Duration, 10)
	writer := New(srv.Client(), Options{Now: func() time.Time { return t0 }})
	follower := New(srv.Client(), Options{
		Now:         func() time.Time { return t0.Add(3 * time.Second) },
		ChangeDelay: func(d time.Duration) { delays <- d },
	})
	for _, r := range []*Registry{writer, follower} {
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	w, err := writer.CreateWebhook(ctx, Webhook{AppID: "app_1", AccountID: "acc", Event: "order.create", Address: "https://x.test/"})
	if err != nil {
		t.Fatal(err)
	}
	if err := writer.DeleteWebhook(ctx, w.ID); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case d := <-delays:
			if d != 3*time.Second {
				t.Fatalf("change delay %s, want 3s", d)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the follower reported no delay for an announced change")
		}
	}
}

// MatchTargets hands out each webhook with its application and the
// version it read them at; any change to a webhook or an application, and
// any full load, moves the version on, so a holder of the old one looks
// them up again.
func TestMatchTargetsVersion(t *testing.T) {
	srv := testenv.Redis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Each change is applied at once and again when its announcement comes
	// back, which moves the version too: count the announcements applied.
	var echoes atomic.Int32
	r := New(srv.Client(), Options{ChangeDelay: func(time.Duration) { echoes.Add(1) }})
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	app, _, err := r.CreateApp(ctx, "shop", "dev@example.com")
	if err != nil {
		t.Fatal(err)
	}
	w, err := r.CreateWebhook(ctx, Webhook{AppID: app.ID, AccountID: "acc1", Event: "order.create", Address: "https://x.test/h"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := echoes.Load(); n < 2 {
			return fmt.Errorf("%d of the 2 announcements applied", n)
		}
		return nil
	})
	got, v := r.MatchTargets(nil, "acc1", "order.create")
	if len(got) != 1 || got[0].Hook.ID != w.ID || got[0].App != r.App(app.ID) || v != r.Version() {
		t.Fatalf("MatchTargets = %+v at version %d (now %d)", got, v, r.Version())
	}
	if more, _ := r.MatchTargets(got, "acc1", "order.update"); len(more) != 1 {
		t.Fatalf("matching another event appended %d targets", len(more)-1)
	}
	changes := []struct {
		name string
		do   func() error
	}{
		{"secret rotated", func() error { _, err := r.RotateSecret(ctx, app.ID, time.Hour); return err }},
		{"another webhook", func() error {
			_, err := r.CreateWebhook(ctx, Webhook{AppID: app.ID, AccountID: "acc2", Event: "order.create", Address: "https://y.test/h"})
			return err
		}},
		{"full load", func() error { return r.Reload(ctx) }},
		{"webhook deleted", func() error { return r.DeleteWebhook(ctx, w.ID) }},
	}
	for _, c := range changes {
		before := r.Version()
		if err := c.do(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r.Version() == before {
			t.Fatalf("%s left the version at %d", c.name, before)
		}
	}
	if got, _ := r.MatchTargets(nil, "acc1", "order.create"); len(got) != 0 {
		t.Fatalf("a deleted webhook still matches: %+v", got)
	}
}

// matchHooks is MatchTargets' webhooks alone.
func matchHooks(r *Registry, account, event string) []*Webhook {
	var hooks []*Webhook
	targets, _ := r.MatchTargets(nil, account, event)
	for _, t := range targets {
		hooks = append(hooks, t.Hook)
	}
	return hooks
}
