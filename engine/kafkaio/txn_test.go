package kafkaio

import "testing"

// Which batches a read_committed reader skips, batch by batch, for the
// cases a fetch can hold.
func TestTxnFilter(t *testing.T) {
	data := func(base, producer int64) batchKind {
		return batchKind{base: base, producer: producer, transactional: true}
	}
	plain := func(base int64) batchKind { return batchKind{base: base, producer: -1} }
	idempotent := func(base, producer int64) batchKind { return batchKind{base: base, producer: producer} }
	commit := func(base, producer int64) batchKind {
		return batchKind{base: base, producer: producer, transactional: true, control: true}
	}
	abort := func(base, producer int64) batchKind {
		return batchKind{base: base, producer: producer, transactional: true, control: true, abortMarker: true}
	}
	for _, c := range []struct {
		name    string
		aborted []abortedTxn
		batches []batchKind
		skip    []bool // read_committed
	}{
		{"non-transactional only", nil,
			[]batchKind{plain(0), idempotent(1, 7), plain(2)}, []bool{false, false, false}},
		{"committed transaction: only its marker skipped", nil,
			[]batchKind{data(0, 1), data(5, 1), commit(10, 1)}, []bool{false, false, true}},
		{"aborted transaction: its batches and marker skipped", []abortedTxn{{1, 0}},
			[]batchKind{data(0, 1), data(5, 1), abort(10, 1), plain(11)}, []bool{true, true, true, false}},
		{"two producers interleaved, one aborts", []abortedTxn{{2, 3}},
			[]batchKind{data(0, 1), data(3, 2), plain(4), data(5, 1), data(6, 2), commit(7, 1), abort(8, 2), data(9, 2)},
			[]bool{false, true, false, false, true, true, true, false}},
		{"aborted transaction begun before this fetch", []abortedTxn{{1, -50}},
			[]batchKind{data(0, 1), abort(3, 1)}, []bool{true, true}},
		{"same producer aborts then commits", []abortedTxn{{1, 0}},
			[]batchKind{data(0, 1), abort(2, 1), data(3, 1), commit(4, 1)}, []bool{true, true, false, true}},
		{"aborts listed out of order", []abortedTxn{{2, 10}, {1, 0}},
			[]batchKind{data(0, 1), abort(2, 1), data(10, 2), abort(12, 2)}, []bool{true, true, true, true}},
		{"an aborted producer's non-transactional batch is kept", []abortedTxn{{1, 0}},
			[]batchKind{data(0, 1), idempotent(1, 1), abort(2, 1)}, []bool{true, false, true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newTxnFilter(c.aborted)
			u := newTxnFilter(c.aborted)
			for i, b := range c.batches {
				if got := f.skip(b, ReadCommitted); got != c.skip[i] {
					t.Errorf("batch %d (%+v): skip %v, want %v", i, b, got, c.skip[i])
				}
				// read_uncommitted skips markers only.
				if got := u.skip(b, ReadUncommitted); got != b.control {
					t.Errorf("read_uncommitted, batch %d: skip %v, want %v", i, got, b.control)
				}
			}
		})
	}
}

func TestParseIsolation(t *testing.T) {
	for s, want := range map[string]Isolation{"read_committed": ReadCommitted, "read_uncommitted": ReadUncommitted} {
		if got, err := ParseIsolation(s); err != nil || got != want || got.String() != s {
			t.Errorf("%s: %v %v", s, got, err)
		}
	}
	if _, err := ParseIsolation("committed"); err == nil {
		t.Error("a wrong level was accepted")
	}
}
