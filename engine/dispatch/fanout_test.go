package dispatch

import (
	"strconv"
	"testing"
	"unsafe"
)

// A shard hands out one string per account it decoded lately, allocating
// nothing for an account it has, and never holds more than maxAccounts.
func TestShardAccountIDs(t *testing.T) {
	s := &shardRun{accounts: map[string]string{}}
	first := s.account([]byte("acc-1"))
	again := s.account([]byte("acc-1"))
	if first != "acc-1" || unsafe.StringData(first) != unsafe.StringData(again) {
		t.Fatalf("account ids %q and %q are not one string", first, again)
	}
	b := []byte("acc-1")
	if n := testing.AllocsPerRun(100, func() { s.account(b) }); n != 0 {
		t.Fatalf("a known account allocates %.0f times", n)
	}
	for i := range 2 * maxAccounts {
		if got := s.account([]byte("a" + strconv.Itoa(i))); got != "a"+strconv.Itoa(i) {
			t.Fatalf("account %d read as %q", i, got)
		}
		if len(s.accounts) > maxAccounts {
			t.Fatalf("%d account ids held, want at most %d", len(s.accounts), maxAccounts)
		}
	}
}
