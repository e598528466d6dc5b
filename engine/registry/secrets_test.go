package registry

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/internal/testenv"
)

// clock is an injectable clock shared by the registries of a test.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock        { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// verifies reports which of the secrets the Standard Webhooks reference
// library accepts the application's webhook-signature with.
func verifies(t *testing.T, a *App, secrets ...string) []bool {
	t.Helper()
	id := contract.DeliveryID("geckohook.events", 0, 7, "wh_1")
	body := []byte(`{"object_id":1,"event":"order.create","timestamp":2,"resource_url":"https://x.test/orders/1.json"}`)
	ts := time.Now().Unix()
	h := http.Header{}
	h.Set("webhook-id", id)
	h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	h.Set("webhook-signature", string(a.AppendStandardSignature(nil, []byte(id), ts, body)))
	out := make([]bool, len(secrets))
	for i, s := range secrets {
		wh, err := standardwebhooks.NewWebhook(contract.StandardSecret(s))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = wh.Verify(body, h) == nil
	}
	return out
}

func TestRotationOverlapsThenForgets(t *testing.T) {
	srv := testenv.Redis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clk := newClock(time.Now())
	a := New(srv.Client(), Options{Now: clk.Now})
	b := New(srv.Client(), Options{Now: clk.Now}) // another process
	for _, r := range []*Registry{a, b} {
		if err := r.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	app, oldToken, err := a.CreateAppWithScheme(ctx, "shop", "dev@example.com", SchemeBoth)
	if err != nil {
		t.Fatal(err)
	}
	oldSecret := app.Secret
	if !app.SignsGecko() || !app.SignsStandard() || app.SignatureScheme() != SchemeBoth {
		t.Fatal("a both application must sign both ways")
	}
	if got := verifies(t, app, oldSecret); !got[0] {
		t.Fatal("before rotation: the secret does not verify")
	}

	rotated, err := a.RotateSecret(ctx, app.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newSecret := rotated.Secret
	if newSecret == oldSecret || rotated.Signer().Sign([]byte("x")) != contract.NewSigner(newSecret).Sign([]byte("x")) {
		t.Fatal("X-Gecko-Signature must use the new secret from the rotation on")
	}
	if end := rotated.SecretOverlapEnd(); !end.Equal(clk.Now().Add(time.Hour).UTC()) {
		t.Fatalf("overlap ends %v", end)
	}
	_, newToken, err := a.RotateToken(ctx, app.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Both processes, during the overlap: both secrets sign, both tokens work.
	testenv.WaitFor(t, 5*time.Second, func() error {
		for _, r := range []*Registry{a, b} {
			got := r.App(app.ID)
			if got == nil || got.Secret != newSecret || r.AppByToken(newToken) == nil {
				return fmt.Errorf("rotation not seen yet")
			}
		}
		return nil
	})
	clk.Advance(59 * time.Minute)
	for name, r := range map[string]*Registry{"writer": a, "follower": b} {
		if got := verifies(t, r.App(app.ID), newSecret, oldSecret); !got[0] || !got[1] {
			t.Fatalf("%s during the overlap: new verifies %v, old verifies %v", name, got[0], got[1])
		}
		sig := string(r.App(app.ID).AppendStandardSignature(nil, []byte("id"), 1, []byte("b")))
		if first := strings.Fields(sig)[0]; first != string(contract.NewSigner(newSecret).AppendStandardSignature(nil, []byte("id"), 1, []byte("b"))) {
			t.Fatalf("%s: the new secret's entry must come first: %s", name, sig)
		}
		if r.AppByToken(oldToken) == nil || r.AppByToken(newToken) == nil {
			t.Fatalf("%s: both tokens must work during the overlap", name)
		}
	}

	// After the overlap: by time alone, in every process.
	clk.Advance(time.Minute)
	for name, r := range map[string]*Registry{"writer": a, "follower": b} {
		if got := verifies(t, r.App(app.ID), newSecret, oldSecret); !got[0] || got[1] {
			t.Fatalf("%s after the overlap: new verifies %v, old verifies %v", name, got[0], got[1])
		}
		if r.AppByToken(oldToken) != nil || r.AppByToken(newToken) == nil {
			t.Fatalf("%s: the old token must be refused after the overlap", name)
		}
		if !r.App(app.ID).SecretOverlapEnd().IsZero() {
			t.Fatalf("%s: an ended overlap is still shown", name)
		}
	}
	raw, err := srv.Client().HGet(ctx, "gh:apps", app.ID).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(raw, oldSecret) {
		t.Fatal("the record dropped the old secret before any write or cleanup (test is wrong)")
	}
	if err := b.DropExpired(ctx); err != nil {
		t.Fatal(err)
	}
	raw, _ = srv.Client().HGet(ctx, "gh:apps", app.ID).Result()
	if strings.Contains(raw, oldSecret) || strings.Contains(raw, HashToken(oldToken)) {
		t.Fatal("the stored record still holds the old secret or token after a cleanup")
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := len(a.App(app.ID).PreviousSecrets); n != 0 {
			return fmt.Errorf("writer still holds %d previous secrets", n)
		}
		return nil
	})
}

func TestRotationWithoutOverlapAndSchemes(t *testing.T) {
	srv := testenv.Redis(t)
	ctx := context.Background()
	r := New(srv.Client(), Options{})
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	app, token, err := r.CreateApp(ctx, "shop", "dev@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if app.SignatureScheme() != SchemeGecko || !app.SignsGecko() || app.SignsStandard() {
		t.Fatal("the default scheme must be gecko")
	}
	old := app.Secret
	app, err = r.RotateSecret(ctx, app.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := verifies(t, app, app.Secret, old); !got[0] || got[1] || len(app.PreviousSecrets) != 0 {
		t.Fatal("overlap 0 must retire the old secret at once")
	}
	if _, newToken, err := r.RotateToken(ctx, app.ID, 0); err != nil || r.AppByToken(token) != nil || r.AppByToken(newToken) == nil {
		t.Fatalf("overlap 0 must refuse the old token at once (err %v)", err)
	}
	for _, s := range []string{SchemeStandard, SchemeBoth, SchemeGecko} {
		got, err := r.SetScheme(ctx, app.ID, s)
		if err != nil || got.SignatureScheme() != s || r.App(app.ID).SignatureScheme() != s {
			t.Fatalf("SetScheme(%s): %v", s, err)
		}
		if got.SignsStandard() != (s != SchemeGecko) || got.SignsGecko() != (s != SchemeStandard) {
			t.Fatalf("scheme %s signs gecko %v, standard %v", s, got.SignsGecko(), got.SignsStandard())
		}
	}
	if _, err := r.SetScheme(ctx, app.ID, "svix"); err == nil {
		t.Fatal("an unknown scheme must be refused")
	}
	if _, err := r.RotateSecret(ctx, "app_missing", time.Hour); err != ErrNotFound {
		t.Fatalf("rotating a missing application: %v, want ErrNotFound", err)
	}
}

// During a rotation an attempt signs with two secrets and reads the clock,
// still without allocating.
func TestStandardSignatureDuringRotationAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; make test runs this without it")
	}
	clk := newClock(time.Now())
	a := &App{Secret: "new-secret", Scheme: SchemeBoth, PreviousSecrets: []Retired{{Value: "old-secret", Until: clk.Now().Add(time.Hour)}}}
	a.prepare(clk.Now)
	id := []byte(contract.DeliveryID("geckohook.events", 0, 7, "wh_1"))
	body := []byte(`{"object_id":1}`)
	a.AppendStandardSignature(nil, id, 1, body) // warm the pools
	allocs := testing.AllocsPerRun(200, func() {
		var buf [2*64 + 1]byte
		if sig := a.AppendStandardSignature(buf[:0], id, 1, body); len(sig) != 2*contract.StandardSignatureLen+1 {
			t.Fatalf("%d bytes, want two entries", len(sig))
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per attempt during a rotation, want 0", allocs)
	}
}
