//go:build race

package registry

// raceEnabled: allocation counts are not meaningful under the race detector
// (sync.Pool drops items on purpose); `make test` runs the allocation tests
// again without it.
const raceEnabled = true
