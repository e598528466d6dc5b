package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
)

// rubyVerifiesGecko checks X-Gecko-Signature the way a Ruby receiver does,
// over the body exactly as received.
func rubyVerifiesGecko(t *testing.T, secret string, r loadtest.Received) bool {
	t.Helper()
	ruby := testenv.Tool(t, "ruby")
	cmd := exec.Command(ruby, "-ropenssl", "-rbase64", "-e",
		`body = STDIN.read
want = Base64.strict_encode64(OpenSSL::HMAC.digest("SHA256", ENV.fetch("GH_SECRET"), body))
exit(OpenSSL.secure_compare(want, ENV.fetch("GH_SIGNATURE")) ? 0 : 1)`)
	cmd.Stdin = strings.NewReader(string(r.Body))
	cmd.Env = append(os.Environ(), "GH_SECRET="+secret, "GH_SIGNATURE="+r.Signature)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return false
	}
	if err != nil {
		t.Fatalf("ruby: %v: %s", err, out)
	}
	return true
}

// standardVerifies checks the Standard Webhooks headers with the reference
// library (timestamp tolerance included) and the secret in whsec_ form.
func standardVerifies(t *testing.T, secret string, r loadtest.Received) error {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(contract.StandardSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("webhook-id", r.WebhookID)
	h.Set("webhook-timestamp", r.WebhookTimestamp)
	h.Set("webhook-signature", r.WebhookSignature)
	return wh.Verify(r.Body, h)
}

// One `both` application through a real dispatcher: every request carries
// both signatures, a retry keeps its webhook-id and is signed again at its
// own time, and a secret rotation is seen by the receiver as the Standard
// Webhooks signatures of both secrets during the overlap (X-Gecko-Signature
// with the new one), then of the new one only. A `standard` application
// beside it gets the Standard Webhooks headers without X-Gecko-Signature.
func TestBothSchemeAndRotationThroughDispatcher(t *testing.T) {
	dispClock := newClock(time.Unix(1_800_000_000, 0))
	regClock := newClock(time.Now()) // the dispatcher process's registry clock
	e := startEnvWith(t, func(path string, n int) int {
		if n == 0 {
			return 500 // the first attempt fails: a retry follows
		}
		return 200
	}, func(o *Options) {
		o.Now = dispClock.Now
		o.PollEvery = 5 * time.Millisecond
		o.Lease = 30 * time.Second
		// The dispatcher runs in its own process: its registry follows the
		// API's (e.reg) over Redis, on its own clock.
		reg := registry.New(o.Redis, registry.Options{Now: regClock.Now})
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		if err := reg.Start(ctx); err != nil {
			t.Fatal(err)
		}
		o.Registry = reg
	})
	ctx := context.Background()
	dreg := e.disp.o.Registry
	if _, err := e.reg.SetScheme(ctx, e.app.ID, registry.SchemeBoth); err != nil {
		t.Fatal(err)
	}
	hook := e.hook("acc1", "order.create", "/both")
	// A standard application beside it.
	std, _, err := e.reg.CreateAppWithScheme(ctx, "std", "std@example.com", registry.SchemeStandard)
	if err != nil {
		t.Fatal(err)
	}
	stdHook, err := e.reg.CreateWebhook(ctx, registry.Webhook{AppID: std.ID, AccountID: "acc2", Event: "order.create", Address: e.recv.URL + "/std"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		if a := dreg.App(e.app.ID); a == nil || !a.SignsStandard() || dreg.Webhook(hook.ID) == nil || dreg.Webhook(stdHook.ID) == nil {
			return errors.New("the dispatcher's registry has not seen the applications yet")
		}
		return nil
	})
	event := func(id int) string {
		return fmt.Sprintf(`{"account_id":"acc1","event":"order.create","object_id":%d,"timestamp":1700000000}`, id)
	}
	check := func(r loadtest.Received, geckoSecret string) {
		t.Helper()
		if r.WebhookID == "" || r.WebhookID != r.DeliveryID {
			t.Errorf("webhook-id %q, X-Gecko-Delivery %q: must be the same", r.WebhookID, r.DeliveryID)
		}
		ts, err := strconv.ParseInt(r.WebhookTimestamp, 10, 64)
		if err != nil || ts < r.At.Unix()-5 || ts > r.At.Unix() {
			t.Errorf("webhook-timestamp %q is not the attempt's time (%d)", r.WebhookTimestamp, r.At.Unix())
		}
		if !rubyVerifiesGecko(t, geckoSecret, r) {
			t.Errorf("ruby refuses X-Gecko-Signature %q", r.Signature)
		}
	}

	// Before any rotation, with a retry.
	secret1 := e.app.Secret
	e.produce("acc1", event(1))
	e.produce("acc2", `{"account_id":"acc2","event":"order.create","object_id":1,"timestamp":1700000000}`)
	first := e.waitReceived("/both", 1)[0]
	stdFirst := e.waitReceived("/std", 1)[0]
	// The clock moves only once both failures are scheduled: a failure
	// concluded after the move would be due 18 s after it.
	testenv.WaitFor(t, 10*time.Second, func() error {
		for _, id := range []string{first.DeliveryID, stdFirst.DeliveryID} {
			if e.find(id) == nil {
				return fmt.Errorf("first failure of %s not scheduled", id)
			}
		}
		return nil
	})
	dispClock.Add(19 * time.Second) // past the first retry's due time
	got := e.waitReceived("/both", 2)
	stdGot := e.waitReceived("/std", 2)
	for _, r := range stdGot {
		if r.Signature != "" || r.WebhookID != r.DeliveryID {
			t.Errorf("standard: X-Gecko-Signature %q sent, or webhook-id %q is not the delivery id %q", r.Signature, r.WebhookID, r.DeliveryID)
		}
		if err := standardVerifies(t, std.Secret, r); err != nil {
			t.Errorf("standard: reference library refuses the request: %v", err)
		}
	}
	if stdGot[0].WebhookID != stdGot[1].WebhookID {
		t.Error("standard: a retry changed webhook-id")
	}
	retry := got[1]
	if first.Status != 500 || retry.Status != 200 || retry.WebhookID != first.WebhookID {
		t.Fatalf("attempts %d then %d, webhook-ids %s and %s", first.Status, retry.Status, first.WebhookID, retry.WebhookID)
	}
	for _, r := range got {
		check(r, secret1)
		if err := standardVerifies(t, secret1, r); err != nil {
			t.Errorf("reference library refuses the request: %v", err)
		}
		if n := len(strings.Fields(r.WebhookSignature)); n != 1 {
			t.Errorf("%d webhook-signature entries without a rotation", n)
		}
	}
	// webhook-timestamp is the retry's own time, not the first attempt's,
	// so a receiver's tolerance (5 minutes in the library) is kept.
	if ts, err := strconv.ParseInt(retry.WebhookTimestamp, 10, 64); err != nil || ts < retry.At.Unix()-2 || ts > retry.At.Unix()+2 {
		t.Errorf("the retry's webhook-timestamp %q is not its own time %d", retry.WebhookTimestamp, retry.At.Unix())
	}

	// During the overlap.
	rotated, err := e.reg.RotateSecret(ctx, e.app.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	secret2 := rotated.Secret
	testenv.WaitFor(t, 5*time.Second, func() error {
		if dreg.App(e.app.ID).Secret != secret2 {
			return errors.New("the dispatcher's registry has not seen the rotation yet")
		}
		return nil
	})
	e.produce("acc1", event(2))
	during := e.waitReceived("/both", 3)[2]
	check(during, secret2)
	if rubyVerifiesGecko(t, secret1, during) {
		t.Error("X-Gecko-Signature must use the new secret during the overlap")
	}
	for _, s := range []string{secret2, secret1} {
		if err := standardVerifies(t, s, during); err != nil {
			t.Errorf("during the overlap, a receiver with one of the secrets refuses: %v", err)
		}
	}
	if entries := strings.Fields(during.WebhookSignature); len(entries) != 2 ||
		entries[0] != string(contract.NewSigner(secret2).AppendStandardSignature(nil, []byte(during.WebhookID), mustInt(t, during.WebhookTimestamp), during.Body)) {
		t.Errorf("webhook-signature %q: want two entries, the new secret's first", during.WebhookSignature)
	}

	// After the overlap, by the dispatcher's registry clock alone. The
	// overlap ends an hour after the rotation by the API's clock (real
	// time, some seconds after regClock was set on a loaded machine).
	regClock.Add(rotated.PreviousSecrets[0].Until.Sub(regClock.Now()) + time.Second)
	e.produce("acc1", event(3))
	after := e.waitReceived("/both", 4)[3]
	check(after, secret2)
	if err := standardVerifies(t, secret2, after); err != nil {
		t.Errorf("after the overlap, the new secret: %v", err)
	}
	if err := standardVerifies(t, secret1, after); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
		t.Errorf("after the overlap, the old secret: %v, want no matching signature", err)
	}
}

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
