package kafkaio

// legacy.go reads a fetch answer whose records are legacy message sets
// (magic 0 or 1, written by producers or brokers older than Kafka 0.11)
// through kafka-go's own decoding, copying keys and values out.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/segmentio/kafka-go/protocol"
)

// readLegacy decodes a's record set with kafka-go and appends its records
// to b.recs, their keys and values to b.buf.
func (r *PartitionReader) readLegacy(b *fetchBufs, a *fetchAnswer) error {
	if a.records == nil {
		return nil
	}
	rs, err := decodeRecordSet(a.records)
	if err != nil {
		return err
	}
	return r.readRecordSet(b, &rs, a.aborted)
}

// decodeRecordSet decodes a record set with kafka-go. Its decoder, given
// a record set on its own, can panic on a garbled one (a message size
// that runs its byte count below zero): that is an error here.
func decodeRecordSet(records []byte) (rs protocol.RecordSet, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("cannot decode record set: %v", p)
		}
	}()
	sized := make([]byte, 4, 4+len(records))
	binary.BigEndian.PutUint32(sized, uint32(len(records)))
	if _, err := rs.ReadFrom(bytes.NewBuffer(append(sized, records...))); err != nil {
		return rs, fmt.Errorf("cannot decode record set: %w", err)
	}
	return rs, nil
}

// readRecordSet turns a partition's decoded batches into records, skipping
// what the transaction filter says and records before the fetch offset.
func (r *PartitionReader) readRecordSet(b *fetchBufs, rs *protocol.RecordSet, aborted []abortedTxn) error {
	if rs.Records == nil {
		return nil
	}
	filter := newTxnFilter(aborted)
	var batches []protocol.RecordReader
	if s, ok := rs.Records.(*protocol.RecordStream); ok {
		batches = s.Records
	} else {
		batches = []protocol.RecordReader{rs.Records}
	}
	for _, batch := range batches {
		kind, records := describe(batch)
		if filter.skip(kind, r.c.Isolation) {
			if last := drain(records); last >= r.offset {
				b.recs = append(b.recs, Record{Offset: last, Skip: true})
				r.offset = last + 1
			}
			continue
		}
		if err := r.keep(b, records); err != nil {
			return err
		}
	}
	return nil
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
func (r *PartitionReader) keep(b *fetchBufs, rr protocol.RecordReader) error {
	for {
		rec, err := rr.ReadRecord()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if rec.Offset < r.offset {
			closeBytes(rec)
			continue
		}
		out := Record{Offset: rec.Offset, Time: rec.Time}
		out.Key, err = copyBytes(&b.buf, rec.Key)
		if err == nil {
			out.Value, err = copyBytes(&b.buf, rec.Value)
		}
		closeBytes(rec)
		if err != nil {
			return fmt.Errorf("record at %d: %w", rec.Offset, err)
		}
		b.recs = append(b.recs, out)
		r.offset = rec.Offset + 1
	}
}

// copyBytes copies src to the end of *buf (nil stays nil, empty stays
// empty).
func copyBytes(buf *[]byte, src protocol.Bytes) ([]byte, error) {
	if src == nil {
		return nil, nil
	}
	n := src.Len()
	if n == 0 {
		return []byte{}, nil
	}
	start := len(*buf)
	*buf = append(*buf, make([]byte, n)...)
	if _, err := io.ReadFull(src, (*buf)[start:start+n]); err != nil {
		return nil, err
	}
	return (*buf)[start : start+n : start+n], nil
}

func closeBytes(rec *protocol.Record) {
	if rec.Key != nil {
		_ = rec.Key.Close()
	}
	if rec.Value != nil {
		_ = rec.Value.Close()
	}
}
