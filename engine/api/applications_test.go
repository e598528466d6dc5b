package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
)

// appAnswer decodes {"application":…}.
func appAnswer(t *testing.T, r reply, status int) ApplicationView {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.raw)
	}
	var out struct {
		Application ApplicationView `json:"application"`
	}
	if err := json.Unmarshal(r.raw, &out); err != nil {
		t.Fatal(err)
	}
	return out.Application
}

func TestSignatureSchemeOnCreateAndPatch(t *testing.T) {
	e := start(t, nil)
	body := func(scheme string) string {
		return `{"application":{"name":"s","developer_email":"d@example.com","signature_scheme":"` + scheme + `"}}`
	}
	both := appAnswer(t, e.do("POST", "/v1/applications", adminToken, body("both")), 201)
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(both.SecretWhsec, "whsec_"))
	if both.SignatureScheme != "both" || !strings.HasPrefix(both.SecretWhsec, "whsec_") || err != nil || string(key) != both.Secret {
		t.Fatalf("created: %+v (whsec key decodes to the secret: %v)", both, err == nil && string(key) == both.Secret)
	}
	if a := e.reg.App(both.ID); a == nil || !a.SignsGecko() || !a.SignsStandard() {
		t.Fatal("the stored application does not sign both ways")
	}
	plain := e.createApp("plain")
	if got := appAnswer(t, e.do("GET", "/v1/applications/"+plain.ID, plain.Token, ""), 200); got.SignatureScheme != "gecko" || got.Secret != "" || got.Token != "" {
		t.Fatalf("default scheme, and no secret outside creation and rotation: %+v", got)
	}
	e.expectError(e.do("POST", "/v1/applications", adminToken, body("svix")), 422, "invalid_field", "signature_scheme")

	patch := func(id, token, scheme string) reply {
		return e.do("PATCH", "/v1/applications/"+id, token, `{"application":{"signature_scheme":"`+scheme+`"}}`)
	}
	if got := appAnswer(t, patch(plain.ID, plain.Token, "standard"), 200); got.SignatureScheme != "standard" || got.Secret != "" {
		t.Fatalf("patched by its own token: %+v", got)
	}
	if a := e.reg.App(plain.ID); a.SignsGecko() || !a.SignsStandard() {
		t.Fatal("standard must mean the Standard Webhooks headers only")
	}
	if got := appAnswer(t, patch(plain.ID, adminToken, "gecko"), 200); got.SignatureScheme != "gecko" {
		t.Fatalf("patched by the admin: %+v", got)
	}
	e.expectError(patch(plain.ID, adminToken, "v2"), 422, "invalid_field", "gecko, standard, both")
	e.expectError(e.do("PATCH", "/v1/applications/"+plain.ID, adminToken, `{"application":{}}`), 422, "missing_field", "signature_scheme")
	e.expectError(patch(plain.ID, both.Token, "both"), 404, "not_found", "")
	e.expectError(patch(plain.ID, "", "both"), 401, "unauthorized", "")
	e.expectError(patch("app_missing", adminToken, "both"), 404, "not_found", "")
	e.expectError(e.do("DELETE", "/v1/applications/"+plain.ID, adminToken, ""), 405, "method_not_allowed", "")
}

// Rotation end to end through the API, with the registry on an injected
// clock: the old secret and token work during the overlap, not after.
func TestRotationThroughAPI(t *testing.T) {
	var now atomic.Int64
	now.Store(fixedNow.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()).UTC() }
	var reg *registry.Registry
	var logs syncBuffer // every log line of the API and registry, debug included
	log := zerolog.New(&logs).Level(zerolog.DebugLevel)
	e := start(t, func(o *Options) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		o.Log = log
		reg = registry.New(testenv.Redis(t).Client(), registry.Options{Now: clock, Log: log})
		if err := reg.Start(ctx); err != nil {
			t.Fatal(err)
		}
		o.Registry = reg
		o.SecretOverlap = 2 * time.Hour
	})
	created := appAnswer(t, e.do("POST", "/v1/applications", adminToken,
		`{"application":{"name":"s","developer_email":"d@example.com","signature_scheme":"both"}}`), 201)

	// The application rotates its own secret with the configured overlap.
	rotated := appAnswer(t, e.do("POST", "/v1/applications/"+created.ID+"/secret", created.Token, ""), 200)
	if rotated.Secret == "" || rotated.Secret == created.Secret || rotated.SecretWhsec == "" || rotated.Token != "" ||
		rotated.PreviousSecretExpiresAt != responseTime(clock().Add(2*time.Hour)) {
		t.Fatalf("rotated secret: %+v", rotated)
	}
	if got := appAnswer(t, e.do("GET", "/v1/applications/"+created.ID, created.Token, ""), 200); got.Secret != "" || got.PreviousSecretExpiresAt == "" {
		t.Fatalf("the new secret is shown once; the overlap is shown while it lasts: %+v", got)
	}
	// The admin rotates the token, asking for a 1h overlap.
	tok := appAnswer(t, e.do("POST", "/v1/applications/"+created.ID+"/token", adminToken, `{"overlap":"1h"}`), 200)
	if tok.Token == "" || tok.Token == created.Token || tok.Secret != "" || tok.PreviousTokenExpiresAt != responseTime(clock().Add(time.Hour)) {
		t.Fatalf("rotated token: %+v", tok)
	}
	signers := func() (n int) {
		a := reg.App(created.ID)
		return len(strings.Fields(string(a.AppendStandardSignature(nil, []byte("id"), 1, []byte("{}")))))
	}
	now.Add(int64(59 * time.Minute))
	for _, token := range []string{created.Token, tok.Token} {
		if r := e.do("GET", "/v1/webhooks", token, ""); r.status != 200 {
			t.Fatalf("during the overlap a token is refused: %d %s", r.status, r.raw)
		}
	}
	if n := signers(); n != 2 {
		t.Fatalf("during the overlap %d secrets sign, want 2", n)
	}
	now.Add(int64(time.Minute))
	e.expectError(e.do("GET", "/v1/webhooks", created.Token, ""), 401, "unauthorized", "")
	if r := e.do("GET", "/v1/webhooks", tok.Token, ""); r.status != 200 {
		t.Fatalf("the new token is refused: %d", r.status)
	}
	now.Add(int64(time.Hour))
	if n := signers(); n != 1 {
		t.Fatalf("after the overlap %d secrets sign, want 1", n)
	}
	if got := appAnswer(t, e.do("GET", "/v1/applications/"+created.ID, tok.Token, ""), 200); got.PreviousSecretExpiresAt != "" || got.PreviousTokenExpiresAt != "" {
		t.Fatalf("ended overlaps still shown: %+v", got)
	}

	// Overlap 0 retires at once; bad overlaps are refused.
	again := appAnswer(t, e.do("POST", "/v1/applications/"+created.ID+"/token", tok.Token, `{"overlap":"0s"}`), 200)
	e.expectError(e.do("GET", "/v1/webhooks", tok.Token, ""), 401, "unauthorized", "")
	for _, b := range []string{`{"overlap":"-1h"}`, `{"overlap":"soon"}`, `{"overlap":"9000h"}`} {
		e.expectError(e.do("POST", "/v1/applications/"+created.ID+"/secret", again.Token, b), 422, "invalid_field", "overlap")
	}
	other := appAnswer(t, e.do("POST", "/v1/applications", adminToken, `{"application":{"name":"o","developer_email":"o@example.com"}}`), 201)
	e.expectError(e.do("POST", "/v1/applications/"+created.ID+"/secret", other.Token, ""), 404, "not_found", "")
	e.expectError(e.do("GET", "/v1/applications/"+created.ID+"/secret", adminToken, ""), 405, "method_not_allowed", "")

	// No secret or token, in any form, is ever logged.
	text := logs.String()
	if !strings.Contains(text, "application secret rotated") {
		t.Fatal("the test captured no API log")
	}
	for _, v := range []string{created.Secret, created.SecretWhsec, created.Token, rotated.Secret, rotated.SecretWhsec, tok.Token, again.Token} {
		if v != "" && strings.Contains(text, v) {
			t.Fatalf("a secret or token was logged: %s", text)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
