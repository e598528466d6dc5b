package contract

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"sync"
)

// Signer computes X-Gecko-Signature values for one application secret:
// strict Base64 (no newlines) of HMAC-SHA256(secret, body). It keeps keyed
// HMAC states in a pool, so signing allocates nothing. Safe for concurrent use.
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

// macState is a keyed HMAC with room for its sum, so Sum does not allocate.
type macState struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

// AppendSignature appends the signature of body to dst.
func (s *Signer) AppendSignature(dst, body []byte) []byte {
	m := s.pool.Get().(*macState)
	m.h.Reset()
	m.h.Write(body)
	dst = base64.StdEncoding.AppendEncode(dst, m.h.Sum(m.sum[:0]))
	s.pool.Put(m)
	return dst
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
