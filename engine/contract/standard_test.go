package contract

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// The Standard Webhooks reference library accepts what the signer makes,
// with the secret in its whsec_ form, and refuses it once the timestamp is
// older than its tolerance.
func TestStandardSignatureVerifiesWithReferenceLibrary(t *testing.T) {
	const secret = "gecko-secret"
	wh, err := standardwebhooks.NewWebhook(StandardSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	s := NewSigner(secret)
	id := DeliveryID("geckohook.events", 3, 1234, "wh_1")
	body := []byte(signBody)
	headers := func(ts int64, sig []byte) http.Header {
		h := http.Header{}
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
		h.Set("webhook-signature", string(sig))
		return h
	}
	now := time.Now().Unix()
	sig := s.AppendStandardSignature(nil, []byte(id), now, body)
	if !strings.HasPrefix(string(sig), "v1,") || len(sig) != StandardSignatureLen {
		t.Fatalf("signature %q is not one v1 entry of %d bytes", sig, StandardSignatureLen)
	}
	if err := wh.Verify(body, headers(now, sig)); err != nil {
		t.Fatalf("reference library refuses a fresh signature: %v", err)
	}
	// Its own signature of the same message is the same bytes.
	want, _ := wh.Sign(id, time.Unix(now, 0), body)
	if string(sig) != want {
		t.Fatalf("signature %s, reference library signs %s", sig, want)
	}
	// Pooled state must be reset between uses, and entries join with a space.
	other := NewSigner("another-secret")
	two := other.AppendStandardSignature(append(sig, ' '), []byte(id), now, body)
	if err := wh.Verify(body, headers(now, two)); err != nil {
		t.Fatalf("reference library refuses the second of two entries: %v", err)
	}
	if err := wh.Verify(append([]byte(nil), body[1:]...), headers(now, sig)); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
		t.Fatalf("altered body: err = %v, want no matching signature", err)
	}
	old := now - 10*60
	oldSig := s.AppendStandardSignature(nil, []byte(id), old, body)
	if err := wh.Verify(body, headers(old, oldSig)); !errors.Is(err, standardwebhooks.ErrMessageTooOld) {
		t.Fatalf("10-minute-old timestamp: err = %v, want too old", err)
	}
	if err := wh.VerifyIgnoringTimestamp(body, headers(old, oldSig)); err != nil {
		t.Fatalf("the old message's signature itself is wrong: %v", err)
	}
	long := strings.Repeat("x", 100) // longer than the prefix buffer
	lsig := s.AppendStandardSignature(nil, []byte(long), now, body)
	if want, _ := wh.Sign(long, time.Unix(now, 0), body); string(lsig) != want {
		t.Fatalf("long id: signature %s, reference library signs %s", lsig, want)
	}
}

func TestStandardSignAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under -race; make test runs this without it")
	}
	s := NewSigner("gecko-secret")
	body := []byte(signBody)
	id := make([]byte, 0, DeliveryIDLen)
	id = AppendDeliveryID(id, "geckohook.events", 3, 1234, "wh_1")
	s.AppendStandardSignature(nil, id, 1546272000, body) // warm the pool
	allocs := testing.AllocsPerRun(200, func() {
		var buf [2*64 + 1]byte // two entries, as during a rotation
		sig := s.AppendStandardSignature(buf[:0], id, 1546272000, body)
		sig = append(sig, ' ')
		sig = s.AppendStandardSignature(sig, id, 1546272000, body)
		if len(sig) != 2*StandardSignatureLen+1 {
			t.Fatalf("two entries are %d bytes", len(sig))
		}
	})
	if allocs != 0 {
		t.Fatalf("standard signatures allocate %.1f times per attempt, want 0", allocs)
	}
}

func TestStandardSecret(t *testing.T) {
	if got := StandardSecret("gecko-secret"); got != "whsec_Z2Vja28tc2VjcmV0" {
		t.Fatalf("StandardSecret = %s", got)
	}
}
