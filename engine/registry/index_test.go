package registry

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/geckohook/geckohook/internal/testenv"
)

func ids(hooks []*Webhook) []string {
	out := make([]string, len(hooks))
	for i, w := range hooks {
		out[i] = w.ID
	}
	return out
}

// After a full load every account's and application's webhooks are windows
// of shared arrays: changes to one must never show through another's, and
// a follower learns of an Import from its one reload announcement.
func TestLoadedIndexFollowsChanges(t *testing.T) {
	srv := testenv.Redis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	writer := New(srv.Client(), Options{ReloadEvery: -1})
	follower := New(srv.Client(), Options{ReloadEvery: -1})
	if err := follower.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hooks := synthetic(200)
	if err := writer.Import(ctx, hooks); err != nil {
		t.Fatal(err)
	}
	if err := writer.AnnounceReload(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if _, n := follower.Counts(); n != len(hooks) {
			return fmt.Errorf("follower holds %d webhooks after the import, want %d", n, len(hooks))
		}
		return nil
	})
	r := follower
	// acc-3 has 4 webhooks, each for another event; acc-4 follows it.
	if got := matchHooks(r, "acc-3", loadEvents[2]); len(got) != 1 || got[0].AccountID != "acc-3" || got[0].Event != loadEvents[2] {
		t.Fatalf("Match(acc-3, %s) = %v", loadEvents[2], got)
	}
	before4 := ids(matchHooks(r, "acc-4", loadEvents[0]))
	added, err := writer.CreateWebhook(ctx, Webhook{AppID: hooks[6].AppID, AccountID: "acc-3", Event: loadEvents[2], Address: "https://new.test/"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if got := matchHooks(r, "acc-3", loadEvents[2]); len(got) != 2 || !slices.Contains(ids(got), added.ID) {
			return fmt.Errorf("Match after a create = %v", ids(got))
		}
		return nil
	})
	if got := ids(matchHooks(r, "acc-4", loadEvents[0])); !slices.Equal(got, before4) {
		t.Fatalf("a create on acc-3 changed acc-4's webhooks: %v, was %v", got, before4)
	}
	app := r.Webhooks(added.AppID, "")
	if app[len(app)-1].ID != added.ID || !slices.IsSortedFunc(app, byCreation) {
		t.Fatalf("the application's webhooks are not in listing order, the new one last: %v", ids(app))
	}
	if err := writer.DeleteWebhook(ctx, hooks[6].ID); err != nil { // acc-3's first
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if r.Webhook(hooks[6].ID) != nil || len(r.Webhooks(added.AppID, "acc-3")) != 4 { // 4 + 1 - 1
			return fmt.Errorf("the deleted webhook is still listed: %v", ids(r.Webhooks(added.AppID, "acc-3")))
		}
		return nil
	})
	if got := ids(matchHooks(r, "acc-4", loadEvents[0])); !slices.Equal(got, before4) {
		t.Fatalf("a delete on acc-3 changed acc-4's webhooks: %v, was %v", got, before4)
	}

	// A delete before the application was ever listed (its webhooks still
	// in the order the load read them).
	app0 := 0
	for _, h := range hooks {
		if h.AppID == hooks[0].AppID {
			app0++
		}
	}
	if err := writer.DeleteWebhook(ctx, hooks[0].ID); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if r.Webhook(hooks[0].ID) != nil {
			return fmt.Errorf("webhook %s not deleted", hooks[0].ID)
		}
		return nil
	})
	if got := r.Webhooks(hooks[0].AppID, ""); len(got) != app0-1 || slices.Contains(ids(got), hooks[0].ID) || !slices.IsSortedFunc(got, byCreation) {
		t.Fatalf("after a delete, %s lists %d webhooks (want %d, in order, without %s)", hooks[0].AppID, len(got), app0-1, hooks[0].ID)
	}

	// Paging through an application gives each webhook once, in order.
	all := r.Webhooks(added.AppID, "")
	var paged []*Webhook
	var last *Webhook
	for {
		var after func(*Webhook) bool
		if last != nil {
			l := last
			after = func(w *Webhook) bool { return byCreation(l, w) < 0 }
		}
		page, more := r.WebhooksAfter(added.AppID, "", after, 7)
		paged = append(paged, page...)
		if !more {
			break
		}
		last = page[len(page)-1]
	}
	if !slices.Equal(ids(paged), ids(all)) {
		t.Fatalf("paging gave %d webhooks, listing %d", len(paged), len(all))
	}
	if page, more := r.WebhooksAfter(added.AppID, "acc-3", nil, 3); len(page) != 3 || page[0].ID != hooks[7].ID || !more {
		t.Fatalf("one account's page = %v (more %v)", ids(page), more)
	}
}

// MatchTargets runs for every event: into a reused slice it must not
// allocate.
func TestMatchAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	r := New(nil, Options{})
	r.index = buildIndex(nil, [][]Webhook{synthetic(1000)})
	targets := make([]Target, 0, 4) // the fetch loop's scratch
	if n := testing.AllocsPerRun(1000, func() {
		targets, _ = r.MatchTargets(targets[:0], "acc-9", loadEvents[3])
		if len(targets) != 1 {
			t.Fatal("wrong match")
		}
		if targets, _ = r.MatchTargets(targets[:0], "acc-9", "nothing"); len(targets) != 0 {
			t.Fatal("wrong match")
		}
	}); n != 0 {
		t.Errorf("MatchTargets allocates %.1f times a call", n)
	}
}
