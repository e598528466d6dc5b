package sender

import "testing"

func TestSendSignedHeadersPerScheme(t *testing.T) {
	base, seen := captureServer(t)
	s := New(Options{Policy: devPolicy})
	ts, std := []byte("1767225600"), []byte("v1,bmV3 v1,b2xk")

	// standard: the Standard Webhooks headers only.
	wantSuccess(t, s.SendSigned(base+"/", testBody, testID, Signatures{Timestamp: ts, Standard: std}), 204)
	r := <-seen
	oneHeader(t, r.header, "webhook-id", string(testID))
	oneHeader(t, r.header, "webhook-timestamp", string(ts))
	oneHeader(t, r.header, "webhook-signature", string(std))
	oneHeader(t, r.header, "X-Gecko-Delivery", string(testID))
	if v := r.header.Values("X-Gecko-Signature"); len(v) != 0 {
		t.Errorf("standard scheme sent X-Gecko-Signature %q", v)
	}

	// both.
	wantSuccess(t, s.SendSigned(base+"/", testBody, testID, Signatures{Gecko: testSig, Timestamp: ts, Standard: std}), 204)
	r = <-seen
	oneHeader(t, r.header, "X-Gecko-Signature", string(testSig))
	oneHeader(t, r.header, "webhook-signature", string(std))

	// gecko: as before, no Standard Webhooks header.
	wantSuccess(t, s.Send(base+"/", testBody, testID, testSig), 204)
	r = <-seen
	oneHeader(t, r.header, "X-Gecko-Signature", string(testSig))
	for _, h := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
		if v := r.header.Values(h); len(v) != 0 {
			t.Errorf("gecko scheme sent %s %q", h, v)
		}
	}
}
