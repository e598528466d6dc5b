// Package contract is geckohook's delivery contract as pure code: the event
// a producer writes, the exact body bytes a receiver gets, the signature,
// the delivery id, how a response is classified and when a failed delivery
// is retried. Nothing here does I/O.
package contract

// The contract's default names; each can be changed by configuration.
const (
	// DefaultDeliveryHeader carries the delivery id.
	DefaultDeliveryHeader = "X-Gecko-Delivery"
	// DefaultSignatureHeader carries Base64(HMAC-SHA256(secret, body)).
	DefaultSignatureHeader = "X-Gecko-Signature"
	// DefaultRedisPrefix starts every Redis key geckohook writes.
	DefaultRedisPrefix = "gh:"
)
