package contract

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"strconv"
	"sync"
)

// Signer computes the signatures of one application secret: X-Gecko-Signature
// values, strict Base64 (no newlines) of HMAC-SHA256(secret, body), and
// Standard Webhooks v1 entries of webhook-signature. It keeps keyed HMAC
// states in a pool, so signing allocates nothing. Safe for concurrent use.
type Signer struct {
	pool sync.Pool
}

// SignatureLen is the length of a signature value.
var SignatureLen = base64.StdEncoding.EncodedLen(sha256.Size)

// NewSigner returns a Signer for secret.
func NewSigner(secret string) *Signer {
	key := []byte(secret)
	s := &Signer{}
	s.pool.New = func() any { return &macState{h: hmac.New(sha256.New, key)} }
	return s
}

// macState is a keyed HMAC with room for its sum, so Sum does not allocate,
// and for the "{id}.{timestamp}." prefix of a Standard Webhooks message.
type macState struct {
	h      hash.Hash
	sum    [sha256.Size]byte
	prefix [standardPrefixCap]byte
}

// standardPrefixCap holds "{id}.{timestamp}." for ids up to 64 bytes (a
// delivery id is DeliveryIDLen); longer ids are hashed in pieces.
const standardPrefixCap = 64 + 1 + 20 + 1

// AppendSignature appends the signature of body to dst.
func (s *Signer) AppendSignature(dst, body []byte) []byte {
	m := s.pool.Get().(*macState)
	m.h.Reset()
	m.h.Write(body)
	dst = base64.StdEncoding.AppendEncode(dst, m.h.Sum(m.sum[:0]))
	s.pool.Put(m)
	return dst
}

// StandardSignatureLen is the length of one webhook-signature entry:
// "v1," and the Base64 of a SHA-256 HMAC.
var StandardSignatureLen = len("v1,") + SignatureLen

// AppendStandardSignature appends the Standard Webhooks v1 signature entry
// of a message to dst: "v1," + Base64(HMAC-SHA256(secret,
// "{id}.{timestamp}.{body}")), timestamp in Unix seconds. Several entries
// (one per valid secret during a rotation) are joined with a space.
func (s *Signer) AppendStandardSignature(dst, id []byte, timestamp int64, body []byte) []byte {
	m := s.pool.Get().(*macState)
	m.h.Reset()
	p := m.prefix[:0]
	if len(id) <= 64 {
		p = append(p, id...)
	} else {
		m.h.Write(id)
	}
	p = append(p, '.')
	p = strconv.AppendInt(p, timestamp, 10)
	p = append(p, '.')
	m.h.Write(p)
	m.h.Write(body)
	dst = append(dst, "v1,"...)
	dst = base64.StdEncoding.AppendEncode(dst, m.h.Sum(m.sum[:0]))
	s.pool.Put(m)
	return dst
}

// StandardSecret is secret as Standard Webhooks libraries take it: "whsec_"
// and the Base64 of the secret's bytes, which are the HMAC key.
func StandardSecret(secret string) string {
	return "whsec_" + base64.StdEncoding.EncodeToString([]byte(secret))
}

// Sign returns the signature of body as a string.
func (s *Signer) Sign(body []byte) string {
	return string(s.AppendSignature(make([]byte, 0, SignatureLen), body))
}

// ValidSignature reports whether sig is the signature of body under secret,
// comparing in constant time. Receivers and tests use it.
func ValidSignature(secret string, body []byte, sig []byte) bool {
	want := NewSigner(secret).AppendSignature(nil, body)
	return hmac.Equal(want, sig)
}
