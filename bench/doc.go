// Package bench holds geckohook's Go benchmarks of the delivery hot path
// (decode, body, signature, delivery id, registry lookup). The capacity
// scenarios behind `make bench` will live here too.
package bench
