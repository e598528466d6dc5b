//go:build race

package kafkaio

// raceEnabled says the race detector is on; it drops sync.Pool items at
// random, so allocation counts of pooled code mean nothing under it.
const raceEnabled = true
