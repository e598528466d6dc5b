// Package contract is the delivery contract of seed/webhooks.md as pure code:
// the event a producer writes, the exact body bytes a receiver gets, the
// signature, the delivery id, how a response is classified and when a failed
// delivery is retried. Nothing here does I/O.
package contract
