package kafkaio

// batch.go decodes Kafka's record batches (magic 2) straight from the
// bytes of a fetch response: keys and values stay slices of those bytes
// (or of one buffer of decompressed batches), so a record costs no
// allocation.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"time"

	"github.com/segmentio/kafka-go/protocol"
)

// The layout of a record batch's header, by byte offset.
const (
	batchLengthEnd  = 12 // base offset int64, batch length int32 (counts the bytes after it)
	batchMagicAt    = 16 // after the partition leader epoch int32
	batchCRCAt      = 17 // CRC-32C of the attributes to the end
	batchAttrsAt    = 21
	batchHeaderSize = 61 // up to and including the record count
	minRecordSize   = 7  // length, attributes, timestamp, offset, key, value, headers: a byte each
)

// maxBatchRecords bounds a compressed batch's records once decompressed,
// against answers that would decompress without end (a variable for
// tests).
var maxBatchRecords = 256 << 20

// The attribute bits of a batch.
const (
	attrCompression   = 0x07
	attrTransactional = 0x10
	attrControl       = 0x20
)

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	// errLegacy says a record set holds a message set of magic 0 or 1,
	// which the batch decoder leaves to kafka-go.
	errLegacy = errors.New("legacy message set")
)

// recordBatch is one record batch of a fetch.
type recordBatch struct {
	base            int64
	lastOffsetDelta int32
	attrs           int16
	firstTimestamp  int64
	producer        int64
	count           int32
	records         []byte // as sent: compressed when attrs say so
}

// last is the batch's last offset (also when compaction removed records).
func (b *recordBatch) last() int64 { return b.base + int64(b.lastOffsetDelta) }

// kind is what the transaction filter needs to know of the batch, but for
// the type of a control batch's marker (see controlType).
func (b *recordBatch) kind() batchKind {
	return batchKind{base: b.base, producer: b.producer,
		transactional: b.attrs&attrTransactional != 0, control: b.attrs&attrControl != 0}
}

// nextBatch splits the first record batch off a record set. It returns
// ok false, and no error, when rs holds no whole batch (a broker cuts the
// last batch of a response at its size limit, and the rest comes with the
// next fetch). A batch of another magic than 2 gives errLegacy; a bad
// checksum or header gives an error.
func nextBatch(rs []byte) (b recordBatch, rest []byte, ok bool, err error) {
	if len(rs) <= batchMagicAt {
		return b, nil, false, nil
	}
	if magic := rs[batchMagicAt]; magic != 2 {
		if magic < 2 {
			return b, nil, false, errLegacy
		}
		return b, nil, false, fmt.Errorf("record batch of magic %d", magic)
	}
	n := int(int32(binary.BigEndian.Uint32(rs[8:])))
	if n < batchHeaderSize-batchLengthEnd {
		return b, nil, false, fmt.Errorf("record batch of %d bytes", n)
	}
	if n > len(rs)-batchLengthEnd {
		return b, nil, false, nil
	}
	raw := rs[:batchLengthEnd+n]
	if sum, want := crc32.Checksum(raw[batchAttrsAt:], castagnoli), binary.BigEndian.Uint32(raw[batchCRCAt:]); sum != want {
		return b, nil, false, fmt.Errorf("record batch at offset %d: crc32c %08x, want %08x",
			int64(binary.BigEndian.Uint64(raw)), sum, want)
	}
	b = recordBatch{
		base:            int64(binary.BigEndian.Uint64(raw)),
		attrs:           int16(binary.BigEndian.Uint16(raw[batchAttrsAt:])),
		lastOffsetDelta: int32(binary.BigEndian.Uint32(raw[23:])),
		firstTimestamp:  int64(binary.BigEndian.Uint64(raw[27:])),
		producer:        int64(binary.BigEndian.Uint64(raw[43:])),
		count:           int32(binary.BigEndian.Uint32(raw[57:])),
		records:         raw[batchHeaderSize:],
	}
	if b.lastOffsetDelta < 0 || b.count < 0 {
		return b, nil, false, fmt.Errorf("record batch at offset %d: last offset delta %d, %d records", b.base, b.lastOffsetDelta, b.count)
	}
	return b, rs[len(raw):], true, nil
}

// decompressor turns compressed batches into their records, appending
// them to one buffer. Its zero value is ready.
type decompressor struct {
	src bytes.Reader
}

// records returns the batch's records uncompressed: its own bytes when it
// is not compressed, else appended to *buf (earlier slices of *buf stay
// valid: they keep the old array when it grows).
func (d *decompressor) records(b *recordBatch, buf *[]byte) ([]byte, error) {
	c := protocol.Attributes(b.attrs).Compression()
	if c == 0 {
		return b.records, nil
	}
	codec := c.Codec()
	if codec == nil {
		return nil, fmt.Errorf("record batch at offset %d: unknown compression codec %d", b.base, c)
	}
	d.src.Reset(b.records)
	r := codec.NewReader(&d.src)
	defer r.Close()
	start := len(*buf)
	out := slices.Grow(*buf, 4*len(b.records)+512)
	for {
		if len(out) == cap(out) {
			out = slices.Grow(out, min(cap(out)-start, maxBatchRecords))
		}
		n, err := r.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if len(out)-start > maxBatchRecords {
			return nil, fmt.Errorf("record batch at offset %d: more than %d bytes of %s-compressed records", b.base, maxBatchRecords, codec.Name())
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("record batch at offset %d: cannot decompress %s: %w", b.base, codec.Name(), err)
		}
	}
	*buf = out
	return out[start:len(out):len(out)], nil
}

// appendRecords appends the records of b, uncompressed in data, from
// offset from on. Offsets must grow record by record. Key and Value
// point into data; a null one is nil, an empty one empty. Time is the
// batch's first timestamp plus the record's delta, whatever the batch's
// timestamp type, as kafka-go reads it. Headers are skipped. On error recs keeps what was appended before.
func appendRecords(recs []Record, b *recordBatch, data []byte, from int64) ([]Record, error) {
	recs = slices.Grow(recs, int(min(int64(b.count), int64(len(data)/minRecordSize))))
	w := wire{b: data}
	prev := b.base - 1
	for i := range b.count {
		n := w.varint()
		body := w.take(int(n))
		if w.err != nil {
			return recs, fmt.Errorf("record %d of the batch at offset %d: length %d: %w", i, b.base, n, w.err)
		}
		rec, err := readRecord(body, b)
		if err != nil {
			return recs, fmt.Errorf("record %d of the batch at offset %d: %w", i, b.base, err)
		}
		if rec.Offset <= prev {
			return recs, fmt.Errorf("record %d of the batch at offset %d: offset %d after %d", i, b.base, rec.Offset, prev)
		}
		prev = rec.Offset
		if rec.Offset >= from {
			recs = append(recs, rec)
		}
	}
	return recs, nil
}

// readRecord reads one record's body (what follows its length).
func readRecord(body []byte, b *recordBatch) (Record, error) {
	w := wire{b: body}
	w.take(1) // attributes, unused
	ts := w.varint()
	delta := w.varint()
	key := field(&w)
	value := field(&w)
	if w.err != nil {
		return Record{}, w.err
	}
	if delta < 0 || delta > int64(b.lastOffsetDelta) {
		return Record{}, fmt.Errorf("offset delta %d outside [0, %d]", delta, b.lastOffsetDelta)
	}
	t := b.firstTimestamp + ts
	return Record{Offset: b.base + delta, Time: time.Unix(t/1000, (t%1000)*int64(time.Millisecond)), Key: key, Value: value}, nil
}

// field reads a key or value: a varint length, -1 for null, then bytes.
func field(w *wire) []byte {
	n := w.varint()
	if n == -1 {
		return nil
	}
	if n < -1 || n > int64(w.rest()) {
		if w.err == nil {
			w.err = errTruncated
		}
		return nil
	}
	return w.take(int(n))
}

// controlType reads the type of a control batch's marker from its first
// record's key (version int16, type int16): 0 aborts, 1 commits.
func controlType(b *recordBatch, data []byte) (int16, error) {
	one := *b
	one.count = min(one.count, 1)
	recs, err := appendRecords(nil, &one, data, b.base)
	if err != nil {
		return -1, err
	}
	if len(recs) == 0 || len(recs[0].Key) < 4 {
		return -1, fmt.Errorf("control batch at offset %d without a marker", b.base)
	}
	return int16(binary.BigEndian.Uint16(recs[0].Key[2:])), nil
}
