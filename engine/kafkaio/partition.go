package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// PartitionConfig configures a PartitionReader. Zero values mean the
// defaults in brackets.
type PartitionConfig struct {
	Brokers   []string
	Topic     string
	Partition int
	// Isolation (ReadCommitted).
	Isolation Isolation
	// MinBytes the broker waits for (1), at most MaxWait (100ms);
	// MaxBytes per fetch (8 MiB).
	MinBytes int
	MaxBytes int
	MaxWait  time.Duration
	// Transport carries the requests (a transport of the reader's own,
	// closed by Close). Readers should not share one: a broker answers a
	// connection's requests in order, so one partition's long poll would
	// hold up the others' fetches. It must hand requests to kafka-go's
	// protocol connections, as a *kafka.Transport does: the reader
	// exchanges its fetches with the broker itself (protocol.RawExchanger).
	// With a Session, it carries only the reader's offset lookups.
	Transport kafka.RoundTripper
	// Session, when set, fetches for the reader together with the other
	// readers made with it: one request per broker for all of them. Its
	// topic and isolation must be the reader's; its MinBytes and MaxWait
	// are used instead of the reader's. Close the reader before the
	// session.
	Session *FetchSession
}

// Record is one record of a fetch. Records, and their Key and Value, stay
// valid until the second Fetch after the one that returned them that
// returns records (each fetch reads into a third set of buffers, which
// takes its turn only if the fetch returns records); a nil Value is a
// null value, an empty one was sent empty.
type Record struct {
	Offset int64
	Time   time.Time
	Key    []byte
	Value  []byte
	// Skip marks offsets with nothing to deliver, up to and including
	// Offset: a transaction marker or a batch of an aborted transaction.
	// Its offset must still count as read.
	Skip bool
}

// PartitionReader reads one partition from an offset, record batches at a
// time. kafka-go's Transport carries the requests; the reader reads the
// answers' bytes itself (fetchwire.go, batch.go), so records point into
// buffers it reuses instead of costing allocations. With ReadCommitted it
// never returns a record of an aborted transaction, and never a
// transaction marker (kafka-go's Reader returns both: the broker lists
// aborted transactions in its fetch response, and only a client that
// reads that list can drop them). Not safe for concurrent use.
type PartitionReader struct {
	c      PartitionConfig
	own    *kafka.Transport // the transport the reader made, if it did
	client *kafka.Client
	offset int64
	x      *fetchExchange // the reader's own fetch, without a session
	ask    *fetchAsk      // its part of the session's fetches, with one
	asked  bool           // ask is out
	closed bool
	// bufs are three sets of buffers: bufs[0] takes the next answer,
	// bufs[1] holds the records of the last fetch that returned some, and
	// bufs[2] those of the one before, which the caller may still hold. A
	// fetch that returns records moves each set one place on.
	bufs    [3]fetchBufs
	aborted []abortedTxn
	unzip   decompressor
	// end is the partition's high watermark as of the last fetch (-1
	// before the first answer).
	end int64
}

// fetchBufs are the buffers one fetch's records live in.
type fetchBufs struct {
	// frame is the broker's answer, or with a session the partition's
	// record set copied out of it; keys and values point into it.
	frame   []byte
	version int16  // the answer's Fetch version
	dec     []byte // decompressed batches
	buf     []byte // keys and values copied out of legacy message sets
	recs    []Record
}

// NewPartitionReader returns a reader of c.Partition from offset, which may
// be kafka.FirstOffset or kafka.LastOffset.
func NewPartitionReader(c PartitionConfig, offset int64) *PartitionReader {
	if c.MinBytes <= 0 {
		c.MinBytes = 1
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 8 << 20
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 100 * time.Millisecond
	}
	var own *kafka.Transport
	if c.Transport == nil {
		own = &kafka.Transport{}
		c.Transport = own
	}
	r := &PartitionReader{c: c, offset: offset, own: own, end: -1,
		client: &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: c.Transport, Timeout: 10 * time.Second}}
	r.x = r.newExchange()
	if c.Session != nil {
		c.Session.readers.Add(1)
		r.ask = newFetchAsk(int32(c.Partition), int32(c.MaxBytes))
	}
	return r
}

// newExchange returns the fetch request the reader sends, but for its
// offset.
func (r *PartitionReader) newExchange() *fetchExchange {
	x := &fetchExchange{req: fetchapi.Request{
		ReplicaID:      -1,
		MaxWaitTime:    int32(r.c.MaxWait / time.Millisecond),
		MinBytes:       int32(r.c.MinBytes),
		MaxBytes:       int32(r.c.MaxBytes),
		IsolationLevel: r.c.Isolation.wire(),
		SessionID:      -1,
		SessionEpoch:   -1,
		Topics: []fetchapi.RequestTopic{{
			Topic: r.c.Topic,
			Partitions: []fetchapi.RequestPartition{{
				Partition: int32(r.c.Partition), CurrentLeaderEpoch: -1,
				LogStartOffset: -1, PartitionMaxBytes: int32(r.c.MaxBytes),
			}},
		}},
	}}
	if t, ok := r.c.Transport.(*kafka.Transport); ok {
		x.clientID = t.ClientID
	}
	return x
}

// Close closes the connections of the reader's own transport, and takes
// the reader out of its session.
func (r *PartitionReader) Close() {
	if r.own != nil {
		r.own.CloseIdleConnections()
	}
	if r.c.Session != nil && !r.closed {
		if r.asked {
			r.ask.gone.Store(true)
		}
		r.c.Session.readers.Add(-1)
	}
	r.closed = true
}

// Offset is the next offset Fetch reads.
func (r *PartitionReader) Offset() int64 { return r.offset }

// Lag is how many offsets the reader is behind the partition's end, as of
// its last fetch (0 before the first). With ReadCommitted, records held
// back behind a transaction still open count too: they wait, and a lag
// that keeps growing while the reader is idle is how an open transaction
// shows.
func (r *PartitionReader) Lag() int64 {
	if r.end < 0 || r.offset < 0 {
		return 0
	}
	return max(r.end-r.offset, 0)
}

// Fetch returns the next records, waiting up to MaxWait for some; it may
// return none. Offsets move past every record returned, skipped or not. An
// offset the partition no longer holds (retention deleted it) restarts
// from the earliest one, with an error saying so. With a session, Fetch is
// Take (which asks first when no ask is out).
func (r *PartitionReader) Fetch(ctx context.Context) ([]Record, error) {
	if r.c.Session != nil {
		return r.Take(ctx)
	}
	if r.offset < 0 {
		if err := r.resolve(ctx, r.offset); err != nil {
			return nil, err
		}
	}
	b := &r.bufs[0]
	a, err := r.fetchOwn(ctx, b)
	return r.finish(ctx, b, a, err)
}

// Ask starts the next fetch through the reader's session and returns
// without waiting for it, so that the caller can work through the records
// of the last one meanwhile (they stay valid as Record says); Take waits
// for it. Asking while an ask is out does nothing.
func (r *PartitionReader) Ask(ctx context.Context) error {
	s := r.c.Session
	switch {
	case s == nil:
		return fmt.Errorf("cannot ask for %s/%d ahead: the reader has no session", r.c.Topic, r.c.Partition)
	case r.asked:
		return nil
	case s.c.Topic != r.c.Topic || s.c.Isolation != r.c.Isolation:
		return fmt.Errorf("cannot fetch %s/%d (%s) through a session of %s (%s)",
			r.c.Topic, r.c.Partition, r.c.Isolation, s.c.Topic, s.c.Isolation)
	}
	if r.offset < 0 {
		if err := r.resolve(ctx, r.offset); err != nil {
			return err
		}
	}
	k := r.ask
	k.offset, k.records, k.aborted = r.offset, r.bufs[0].frame, r.aborted
	if err := s.hand(ctx, k); err != nil {
		r.abandon()
		return fmt.Errorf("cannot fetch %s/%d at %d: %w", r.c.Topic, r.c.Partition, r.offset, err)
	}
	r.asked = true
	return nil
}

// Take returns the records of the fetch Ask started, asking first when no
// ask is out, as Fetch does. Without a session it is Fetch.
func (r *PartitionReader) Take(ctx context.Context) ([]Record, error) {
	s := r.c.Session
	if s == nil {
		return r.Fetch(ctx)
	}
	if err := r.Ask(ctx); err != nil {
		return nil, err
	}
	k, b := r.ask, &r.bufs[0]
	rep, err := s.wait(ctx, k)
	r.asked = false
	if err != nil {
		r.abandon()
		return nil, fmt.Errorf("cannot fetch %s/%d at %d: %w", r.c.Topic, r.c.Partition, r.offset, err)
	}
	b.frame, r.aborted, b.version = k.records, k.aborted, rep.version
	return r.finish(ctx, b, rep.a, rep.err)
}

// abandon leaves the ask out and its buffers to the session, which may
// still copy into them, and makes the reader a new one.
func (r *PartitionReader) abandon() {
	r.ask.gone.Store(true)
	r.ask = newFetchAsk(r.ask.partition, r.ask.maxBytes)
	r.bufs[0].frame, r.aborted, r.asked = nil, nil, false
}

// finish reads a, the answer of the fetch into b (err: the fetch failed),
// and returns its records, moving b on in the rotation when there are
// some.
func (r *PartitionReader) finish(ctx context.Context, b *fetchBufs, a fetchAnswer, err error) ([]Record, error) {
	if err == nil {
		err = r.readAnswer(b, &a)
	}
	if err != nil {
		if errors.Is(err, kafka.OffsetOutOfRange) {
			from := r.offset
			if rerr := r.resolve(ctx, kafka.FirstOffset); rerr != nil {
				return nil, rerr
			}
			return nil, fmt.Errorf("offset %d of %s/%d is gone; reading on from %d: %w", from, r.c.Topic, r.c.Partition, r.offset, err)
		}
		return nil, err
	}
	if len(b.recs) == 0 {
		return nil, nil
	}
	r.bufs[0], r.bufs[1], r.bufs[2] = r.bufs[2], r.bufs[0], r.bufs[1]
	return r.bufs[1].recs, nil
}

// fetchOwn fetches the reader's partition on its own, into b.frame.
func (r *PartitionReader) fetchOwn(ctx context.Context, b *fetchBufs) (fetchAnswer, error) {
	x := r.x
	x.req.Topics[0].Partitions[0].FetchOffset = r.offset
	x.frame = b.frame
	res, err := r.c.Transport.RoundTrip(ctx, r.client.Addr, x)
	if err == nil && res != protocol.Message(x) {
		err = fmt.Errorf("the transport answered with %T, not through the fetch's own exchange", res)
	}
	if err != nil {
		// The connection may still be reading into the exchange's frame
		// (RoundTrip returns when ctx ends, not when the connection is
		// done): leave both to it.
		r.x, b.frame = r.newExchange(), nil
		return fetchAnswer{}, fmt.Errorf("cannot fetch %s/%d at %d: %w", r.c.Topic, r.c.Partition, r.offset, err)
	}
	b.frame = x.frame
	b.version = x.version
	return r.parse(b)
}

// parse reads what b.frame, a whole Fetch answer, says about the reader's
// partition.
func (r *PartitionReader) parse(b *fetchBufs) (fetchAnswer, error) {
	if len(b.frame) < 8 {
		return fetchAnswer{}, fmt.Errorf("cannot fetch %s/%d: answer of %d bytes", r.c.Topic, r.c.Partition, len(b.frame))
	}
	a, err := parseFetch(b.frame[8:], b.version, r.c.Topic, int32(r.c.Partition), r.aborted[:0])
	r.aborted = a.aborted
	if err != nil {
		return a, fmt.Errorf("cannot fetch %s/%d at %d: %w", r.c.Topic, r.c.Partition, r.offset, err)
	}
	return a, nil
}

// readAnswer reads the records of a, the answer for the reader's partition
// (its record set in b's buffers), into b, moving the offset past them.
func (r *PartitionReader) readAnswer(b *fetchBufs, a *fetchAnswer) error {
	if err := r.check(a); err != nil {
		return err
	}
	if a.highWatermark >= 0 {
		r.end = a.highWatermark
	}
	from := r.offset
	b.dec, b.buf, b.recs = b.dec[:0], b.buf[:0], b.recs[:0]
	err := r.readBatches(b, a.records, a.aborted)
	if errors.Is(err, errLegacy) && r.offset == from {
		err = r.readLegacy(b, a)
	}
	// A bad batch after good ones ends the fetch at it: the next fetch
	// starts there and reports it.
	if err != nil && r.offset == from {
		return fmt.Errorf("cannot read %s/%d at %d: %w", r.c.Topic, r.c.Partition, r.offset, err)
	}
	return nil
}

// check turns the errors of a fetch answer into Go errors.
func (r *PartitionReader) check(a *fetchAnswer) error {
	if a.errorCode != 0 {
		return fmt.Errorf("cannot fetch %s/%d: %w", r.c.Topic, r.c.Partition, kafka.Error(a.errorCode))
	}
	if !a.found {
		return fmt.Errorf("cannot fetch %s/%d: not in the broker's answer", r.c.Topic, r.c.Partition)
	}
	if a.partError != 0 {
		return fmt.Errorf("cannot fetch %s/%d at %d: %w", r.c.Topic, r.c.Partition, r.offset, kafka.Error(a.partError))
	}
	return nil
}

// readBatches turns a record set's batches into records in b, skipping
// what the transaction filter says and records before the reader's offset
// (a batch starts where it starts, not where the fetch asked), and moving
// the offset past each batch read. It stops at the first batch it cannot
// read, returning why (errLegacy for a legacy message set).
func (r *PartitionReader) readBatches(b *fetchBufs, rs []byte, aborted []abortedTxn) error {
	filter := newTxnFilter(aborted)
	for len(rs) > 0 {
		batch, rest, ok, err := nextBatch(rs)
		if err != nil || !ok {
			return err
		}
		rs = rest
		kind := batch.kind()
		var data []byte
		if kind.control {
			if data, err = r.unzip.records(&batch, &b.dec); err != nil {
				return err
			}
			// A marker that cannot be read counts as a commit, as kafka-go's
			// own decoding had it.
			typ, _ := controlType(&batch, data)
			kind.abortMarker = typ == 0
		}
		if !filter.skip(kind, r.c.Isolation) {
			if data == nil {
				if data, err = r.unzip.records(&batch, &b.dec); err != nil {
					return err
				}
			}
			n := len(b.recs)
			if b.recs, err = appendRecords(b.recs, &batch, data, r.offset); err != nil {
				b.recs = b.recs[:n]
				return err
			}
			if len(b.recs) > n {
				r.offset = b.recs[len(b.recs)-1].Offset + 1
			}
		}
		// Offsets of the batch with nothing returned: skipped batches, and
		// the records compaction removed from a batch's end.
		if last := batch.last(); last >= r.offset {
			b.recs = append(b.recs, Record{Offset: last, Skip: true})
			r.offset = last + 1
		}
	}
	return nil
}

// resolve turns kafka.FirstOffset or kafka.LastOffset into an offset.
func (r *PartitionReader) resolve(ctx context.Context, which int64) error {
	res, err := r.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{
		Topics:         map[string][]kafka.OffsetRequest{r.c.Topic: {{Partition: r.c.Partition, Timestamp: which}}},
		IsolationLevel: kafka.IsolationLevel(r.c.Isolation.wire()),
	})
	if err != nil {
		return fmt.Errorf("cannot list offsets of %s/%d: %w", r.c.Topic, r.c.Partition, err)
	}
	for _, p := range res.Topics[r.c.Topic] {
		if p.Partition != r.c.Partition {
			continue
		}
		if p.Error != nil {
			return fmt.Errorf("cannot list offsets of %s/%d: %w", r.c.Topic, r.c.Partition, p.Error)
		}
		if which == kafka.FirstOffset {
			r.offset = p.FirstOffset
		} else {
			r.offset = p.LastOffset
		}
		return nil
	}
	return fmt.Errorf("cannot list offsets of %s/%d: not in the broker's answer", r.c.Topic, r.c.Partition)
}
