// Package bench holds geckohook's Go benchmarks of the delivery hot path
// (decode, body, signature, delivery id, registry lookup), the in-process
// flood against the raw ceiling, and the retry queue against a real
// redis-server (`make bench-go`). The capacity scenarios behind `make bench`
// are in package loadtest and cmd/geckoload.
package bench
