package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	// hold up the others' fetches.
	Transport kafka.RoundTripper
}

// Record is one record of a fetch. Records, and their Key and Value, stay
// valid until the second Fetch after the one that returned them that
// returns records (fetches take turns between two buffers; one that
// returns nothing, or fails, takes no turn); a nil Value is a null value,
// an empty one was sent empty.
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
// time, through kafka-go's protocol layer. With ReadCommitted it never
// returns a record of an aborted transaction, and never a transaction
// marker (kafka-go's Reader returns both: the broker lists aborted
// transactions in its fetch response, and only a client that reads that
// list can drop them). Not safe for concurrent use.
type PartitionReader struct {
	c      PartitionConfig
	own    *kafka.Transport // the transport the reader made, if it did
	client *kafka.Client
	offset int64
	buf    []byte   // keys and values of the last fetch
	recs   []Record // the last fetch
	// spare are the two sets of buffers fetches take turns with; turn is
	// the one the last fetch used.
	spare [2]struct {
		buf  []byte
		recs []Record
	}
	turn int
	// end is the partition's high watermark as of the last fetch (-1
	// before the first answer).
	end int64
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
	return &PartitionReader{c: c, offset: offset, own: own, end: -1,
		client: &kafka.Client{Addr: kafka.TCP(c.Brokers...), Transport: c.Transport, Timeout: 10 * time.Second}}
}

// Close closes the connections of the reader's own transport.
func (r *PartitionReader) Close() {
	if r.own != nil {
		r.own.CloseIdleConnections()
	}
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
// from the earliest one, with an error saying so.
func (r *PartitionReader) Fetch(ctx context.Context) ([]Record, error) {
	if r.offset < 0 {
		if err := r.resolve(ctx, r.offset); err != nil {
			return nil, err
		}
	}
	res, err := r.c.Transport.RoundTrip(ctx, r.client.Addr, &fetchapi.Request{
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
				FetchOffset: r.offset, LogStartOffset: -1, PartitionMaxBytes: int32(r.c.MaxBytes),
			}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot fetch %s/%d at %d: %w", r.c.Topic, r.c.Partition, r.offset, err)
	}
	p, err := r.partition(res.(*fetchapi.Response))
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
	r.end = p.HighWatermark
	// The records go into the buffers the fetch before last used: those of
	// the last fetch may still be in the caller's hands. A fetch that
	// returns nothing, or fails half-way, gives its turn back (and the
	// offset it moved), so it never costs the caller's records their life.
	from, turn := r.offset, r.turn
	prev, prevRecs := r.buf, r.recs
	r.spare[r.turn].buf, r.spare[r.turn].recs = r.buf, r.recs
	r.turn ^= 1
	r.buf, r.recs = r.spare[r.turn].buf[:0], r.spare[r.turn].recs[:0]
	recs, err := r.read(p)
	if err != nil || len(recs) == 0 {
		r.spare[r.turn].buf, r.spare[r.turn].recs = r.buf, r.recs
		r.turn, r.buf, r.recs = turn, prev, prevRecs
		if err != nil {
			r.offset = from
			return nil, err
		}
	}
	return recs, nil
}

func (r *PartitionReader) partition(res *fetchapi.Response) (*fetchapi.ResponsePartition, error) {
	if res.ErrorCode != 0 {
		return nil, fmt.Errorf("cannot fetch %s/%d: %w", r.c.Topic, r.c.Partition, kafka.Error(res.ErrorCode))
	}
	for i := range res.Topics {
		t := &res.Topics[i]
		for j := range t.Partitions {
			p := &t.Partitions[j]
			if t.Topic != r.c.Topic || int(p.Partition) != r.c.Partition {
				continue
			}
			if p.ErrorCode != 0 {
				return nil, fmt.Errorf("cannot fetch %s/%d at %d: %w", r.c.Topic, r.c.Partition, r.offset, kafka.Error(p.ErrorCode))
			}
			return p, nil
		}
	}
	return nil, fmt.Errorf("cannot fetch %s/%d: not in the broker's answer", r.c.Topic, r.c.Partition)
}

// read turns a partition's record batches into records, skipping what the
// transaction filter says and records before the fetch offset (a batch
// starts where it starts, not where the fetch asked).
func (r *PartitionReader) read(p *fetchapi.ResponsePartition) ([]Record, error) {
	if p.RecordSet.Records == nil {
		return r.recs, nil
	}
	aborted := make([]abortedTxn, len(p.AbortedTransactions))
	for i, a := range p.AbortedTransactions {
		aborted[i] = abortedTxn{producer: a.ProducerID, firstOffset: a.FirstOffset}
	}
	filter := newTxnFilter(aborted)
	var batches []protocol.RecordReader
	if s, ok := p.RecordSet.Records.(*protocol.RecordStream); ok {
		batches = s.Records
	} else {
		batches = []protocol.RecordReader{p.RecordSet.Records}
	}
	for _, b := range batches {
		kind, records := describe(b)
		if filter.skip(kind, r.c.Isolation) {
			if last := drain(records); last >= r.offset {
				r.recs = append(r.recs, Record{Offset: last, Skip: true})
				r.offset = last + 1
			}
			continue
		}
		if err := r.keep(records); err != nil {
			return r.recs, err
		}
	}
	return r.recs, nil
}

// describe says what a batch is and returns the reader of its records.
func describe(b protocol.RecordReader) (batchKind, protocol.RecordReader) {
	switch v := b.(type) {
	case *protocol.RecordBatch:
		return batchKind{base: v.BaseOffset, producer: v.ProducerID, transactional: v.Attributes.Transactional()}, v.Records
	case *protocol.ControlBatch:
		k := batchKind{base: v.BaseOffset, producer: v.ProducerID, transactional: true, control: true}
		// A control batch holds one marker; read it for its type.
		if rec, err := v.ReadRecord(); err == nil {
			if cr, err := protocol.ReadControlRecord(rec); err == nil {
				k.abortMarker = cr.Type == 0
			}
		}
		return k, v
	}
	return batchKind{base: -1, producer: -1}, b
}

// drain reads and releases the rest of a skipped batch's records,
// returning the last offset (-1 if none).
func drain(rr protocol.RecordReader) int64 {
	last := int64(-1)
	if cb, ok := rr.(*protocol.ControlBatch); ok {
		last = cb.BaseOffset
	}
	for {
		rec, err := rr.ReadRecord()
		if err != nil {
			return last
		}
		last = max(last, rec.Offset)
		closeBytes(rec)
	}
}

// keep copies a batch's records from the fetch offset on.
func (r *PartitionReader) keep(rr protocol.RecordReader) error {
	for {
		rec, err := rr.ReadRecord()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("cannot read %s/%d at %d: %w", r.c.Topic, r.c.Partition, r.offset, err)
		}
		if rec.Offset < r.offset {
			closeBytes(rec)
			continue
		}
		out := Record{Offset: rec.Offset, Time: rec.Time}
		out.Key, err = r.copyBytes(rec.Key)
		if err == nil {
			out.Value, err = r.copyBytes(rec.Value)
		}
		closeBytes(rec)
		if err != nil {
			return fmt.Errorf("cannot read %s/%d at %d: %w", r.c.Topic, r.c.Partition, rec.Offset, err)
		}
		r.recs = append(r.recs, out)
		r.offset = rec.Offset + 1
	}
}

// copyBytes copies b into the reader's buffer (nil stays nil).
func (r *PartitionReader) copyBytes(b protocol.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	n := b.Len()
	start := len(r.buf)
	r.buf = append(r.buf, make([]byte, n)...)
	if _, err := io.ReadFull(b, r.buf[start:start+n]); err != nil {
		return nil, err
	}
	return r.buf[start : start+n : start+n], nil
}

func closeBytes(rec *protocol.Record) {
	if rec.Key != nil {
		_ = rec.Key.Close()
	}
	if rec.Value != nil {
		_ = rec.Value.Close()
	}
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
