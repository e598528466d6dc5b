package kafkaio

import (
	"fmt"
	"slices"
)

// Isolation is which records of transactional producers a reader returns.
type Isolation int8

// The isolation levels; the zero value is ReadCommitted.
const (
	// ReadCommitted returns non-transactional records and those of
	// committed transactions only, and nothing past the partition's last
	// stable offset (the first record of a transaction still open).
	ReadCommitted Isolation = iota
	// ReadUncommitted returns every record, aborted transactions included
	// (transaction markers are never returned).
	ReadUncommitted
)

// wire is the level as the Kafka protocol numbers it.
func (i Isolation) wire() int8 {
	if i == ReadUncommitted {
		return 0
	}
	return 1
}

// ParseIsolation reads "read_committed" or "read_uncommitted".
func ParseIsolation(s string) (Isolation, error) {
	switch s {
	case "read_committed":
		return ReadCommitted, nil
	case "read_uncommitted":
		return ReadUncommitted, nil
	}
	return 0, fmt.Errorf("isolation level %q: want read_committed or read_uncommitted", s)
}

// String names the level as the flag spells it.
func (i Isolation) String() string {
	if i == ReadUncommitted {
		return "read_uncommitted"
	}
	return "read_committed"
}

// abortedTxn is one aborted transaction a fetch response lists: its
// producer and the offset of its first record.
type abortedTxn struct {
	producer    int64
	firstOffset int64
}

// batchKind is what a record batch is, for the transaction filter.
type batchKind struct {
	base          int64 // offset of the batch's first record
	producer      int64 // -1 when the producer is not idempotent
	transactional bool
	control       bool
	abortMarker   bool // a control batch whose marker aborts its producer's transaction
}

// txnFilter decides, batch by batch in offset order, which batches of one
// fetch response a read_committed reader skips: every control batch
// (commit and abort markers), and every transactional batch of a producer
// whose transaction the response lists as aborted, from the transaction's
// first offset to its abort marker. It is the consumer's half of Kafka's
// transactions (the broker's half is the last stable offset and the list
// of aborted transactions); pure code, one per response.
type txnFilter struct {
	pending []abortedTxn       // not reached yet, by first offset
	active  map[int64]struct{} // producers inside an aborted transaction
}

// newTxnFilter takes aborted (and sorts it).
func newTxnFilter(aborted []abortedTxn) txnFilter {
	f := txnFilter{pending: aborted}
	slices.SortFunc(f.pending, func(a, b abortedTxn) int { return int(min(max(a.firstOffset-b.firstOffset, -1), 1)) })
	return f
}

// skip reports whether the batch is to be skipped, updating the filter.
func (f *txnFilter) skip(b batchKind, iso Isolation) bool {
	if iso == ReadCommitted && b.producer >= 0 {
		for len(f.pending) > 0 && f.pending[0].firstOffset <= b.base {
			if f.active == nil {
				f.active = make(map[int64]struct{})
			}
			f.active[f.pending[0].producer] = struct{}{}
			f.pending = f.pending[1:]
		}
		_, aborting := f.active[b.producer]
		switch {
		case b.control && b.abortMarker:
			delete(f.active, b.producer)
		case b.transactional && !b.control && aborting:
			return true
		}
	}
	return b.control
}
