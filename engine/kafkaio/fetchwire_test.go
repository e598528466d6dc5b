package kafkaio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go/compress"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// encodeBatch encodes records as one record batch (magic 2, or 0/1 for a
// legacy message set) at offset base, with kafka-go's own encoder.
func encodeBatch(t testing.TB, magic int8, c compress.Compression, base int64, recs ...protocol.Record) []byte {
	t.Helper()
	rs := protocol.RecordSet{Version: magic, Attributes: protocol.Attributes(c), Records: protocol.NewRecordReader(recs...)}
	var buf bytes.Buffer
	if _, err := rs.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()[4:] // the record set's size
	if magic == 2 {
		binary.BigEndian.PutUint64(b, uint64(base))
	}
	return b
}

// controlBatch encodes a transaction marker of producer at offset base.
func controlBatch(t testing.TB, base, producer int64, commit bool) []byte {
	t.Helper()
	typ := int16(0)
	if commit {
		typ = 1
	}
	cr := protocol.ControlRecord{Time: time.UnixMilli(1_700_000_000_000), Type: typ}
	b := encodeBatch(t, 2, 0, base, cr.Record())
	setBatch(b, attrTransactional|attrControl, producer)
	return b
}

// setBatch rewrites a batch's attributes and producer, and its checksum.
func setBatch(b []byte, attrs int16, producer int64) {
	binary.BigEndian.PutUint16(b[batchAttrsAt:], uint16(attrs))
	binary.BigEndian.PutUint64(b[43:], uint64(producer))
	resum(b)
}

// resum recomputes a batch's checksum.
func resum(b []byte) {
	binary.BigEndian.PutUint32(b[batchCRCAt:], crc32.Checksum(b[batchAttrsAt:], castagnoli))
}

// fetchFrame builds a Fetch answer of version v (size and correlation id
// first) about partition 0 of topic "t", holding the record set rs (nil
// for a null one).
func fetchFrame(v int16, hw int64, aborted []abortedTxn, rs []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, 0)
	b = binary.BigEndian.AppendUint32(b, 1) // correlation id
	if v >= 1 {
		b = binary.BigEndian.AppendUint32(b, 0) // throttle
	}
	if v >= 7 {
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint32(b, 0) // session
	}
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint16(b, 1)
	b = append(b, 't')
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint32(b, 0) // partition
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(hw))
	if v >= 4 {
		b = binary.BigEndian.AppendUint64(b, uint64(hw)) // last stable offset
	}
	if v >= 5 {
		b = binary.BigEndian.AppendUint64(b, 0) // log start offset
	}
	if v >= 4 {
		b = binary.BigEndian.AppendUint32(b, uint32(len(aborted)))
		for _, a := range aborted {
			b = binary.BigEndian.AppendUint64(b, uint64(a.producer))
			b = binary.BigEndian.AppendUint64(b, uint64(a.firstOffset))
		}
	}
	if v >= 11 {
		b = binary.BigEndian.AppendUint32(b, 0xffffffff) // preferred read replica
	}
	if rs == nil {
		b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	} else {
		b = binary.BigEndian.AppendUint32(b, uint32(len(rs)))
		b = append(b, rs...)
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// answerFrame reads the records of b.frame, a whole Fetch answer of the
// given version, into b, as the reader does with its own fetch's answer.
func answerFrame(r *PartitionReader, b *fetchBufs, version int16) error {
	b.version = version
	a, err := r.parse(b)
	if err != nil {
		return err
	}
	return r.readAnswer(b, &a)
}

// decodeFrame reads a Fetch answer with a fresh reader of "t"/0 from
// offset from.
func decodeFrame(frame []byte, v int16, iso Isolation, from int64) ([]Record, *PartitionReader, error) {
	r := &PartitionReader{c: PartitionConfig{Topic: "t", Isolation: iso}, offset: from, end: -1}
	b := &fetchBufs{frame: frame}
	err := answerFrame(r, b, v)
	return b.recs, r, err
}

// legacyDecode reads a Fetch answer through kafka-go's decoding.
func legacyDecode(t *testing.T, frame []byte, v int16, iso Isolation) []Record {
	t.Helper()
	r := &PartitionReader{c: PartitionConfig{Topic: "t", Isolation: iso}}
	b := &fetchBufs{frame: frame, version: v}
	a, err := r.parse(b)
	if err == nil {
		err = r.readLegacy(b, &a)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b.recs
}

func sameRecords(t *testing.T, what string, got, want []Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d records, want %d", what, len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Offset != w.Offset || g.Skip != w.Skip || !g.Time.Equal(w.Time) || g.Time.Location() != w.Time.Location() ||
			!bytes.Equal(g.Key, w.Key) || (g.Key == nil) != (w.Key == nil) ||
			!bytes.Equal(g.Value, w.Value) || (g.Value == nil) != (w.Value == nil) {
			t.Fatalf("%s: record %d is {%d %v %q(nil %v) %q(nil %v) skip %v}, want {%d %v %q(nil %v) %q(nil %v) skip %v}", what, i,
				g.Offset, g.Time, g.Key, g.Key == nil, g.Value, g.Value == nil, g.Skip,
				w.Offset, w.Time, w.Key, w.Key == nil, w.Value, w.Value == nil, w.Skip)
		}
	}
}

// someRecords returns n records with null, empty and filled keys and
// values, and times a millisecond apart.
func someRecords(n int) []protocol.Record {
	recs := make([]protocol.Record, n)
	for i := range recs {
		r := protocol.Record{Time: time.UnixMilli(1_700_000_000_000 + int64(i)*7 - 3)}
		switch i % 3 {
		case 1:
			r.Key, r.Value = protocol.NewBytes([]byte{}), protocol.NewBytes([]byte{})
		case 2:
			r.Key = protocol.NewBytes(fmt.Appendf(nil, "acc_%d", i))
			r.Value = protocol.NewBytes([]byte(strings.Repeat(fmt.Sprintf(`{"object_id":%d}`, i), i%5+1)))
		}
		recs[i] = r
	}
	return recs
}

// Every Fetch version kafka-go may negotiate parses to what kafka-go's own
// decoder reads from the same bytes.
func TestParseFetchVersions(t *testing.T) {
	aborted := []abortedTxn{{producer: 7, firstOffset: 3}, {producer: 9, firstOffset: 5}}
	rs := encodeBatch(t, 2, 0, 0, someRecords(3)...)
	for v := int16(0); v <= maxFetchVersion; v++ {
		frame := fetchFrame(v, 42, aborted, rs)
		_, msg, err := protocol.ReadResponse(bytes.NewReader(frame), protocol.Fetch, v)
		if err != nil {
			t.Fatalf("v%d: kafka-go cannot read the answer built for it: %v", v, err)
		}
		kp := msg.(*fetchapi.Response).Topics[0].Partitions[0]
		a, err := parseFetch(frame[8:], v, "t", 0, nil)
		if err != nil {
			t.Fatalf("v%d: %v", v, err)
		}
		if !a.found || a.highWatermark != kp.HighWatermark || len(a.aborted) != len(kp.AbortedTransactions) || !bytes.Equal(a.records, rs) {
			t.Fatalf("v%d: found %v hw %d aborted %v records %d bytes; kafka-go reads hw %d aborted %v",
				v, a.found, a.highWatermark, a.aborted, len(a.records), kp.HighWatermark, kp.AbortedTransactions)
		}
		for i, k := range kp.AbortedTransactions {
			if a.aborted[i] != (abortedTxn{producer: k.ProducerID, firstOffset: k.FirstOffset}) {
				t.Fatalf("v%d: aborted %v, kafka-go reads %v", v, a.aborted, kp.AbortedTransactions)
			}
		}
		if a, err := parseFetch(frame[8:], v, "t", 1, nil); err != nil || a.found {
			t.Fatalf("v%d: partition 1 found %v, %v", v, a.found, err)
		}
	}
}

// Batches of each codec decode to the records kafka-go's decoding gives
// for the same bytes: offsets, times (also with the log-append-time bit,
// which kafka-go ignores), null and empty keys and values.
func TestDecodeMatchesKafkaGo(t *testing.T) {
	codecs := []compress.Compression{compress.None, compress.Gzip, compress.Snappy, compress.Lz4, compress.Zstd}
	for _, c := range codecs {
		for _, logAppend := range []bool{false, true} {
			var rs []byte
			base := int64(0)
			for _, n := range []int{1, 9, 40} {
				b := encodeBatch(t, 2, c, base, someRecords(n)...)
				if logAppend {
					setBatch(b, int16(c)|0x08, -1)
				}
				rs = append(rs, b...)
				base += int64(n)
			}
			frame := fetchFrame(maxFetchVersion, base, nil, rs)
			got, r, err := decodeFrame(frame, maxFetchVersion, ReadCommitted, 0)
			if err != nil {
				t.Fatalf("%v: %v", c, err)
			}
			what := fmt.Sprintf("%v, log append time %v", c, logAppend)
			sameRecords(t, what, got, legacyDecode(t, frame, maxFetchVersion, ReadCommitted))
			if len(got) != 50 || r.Offset() != 50 || r.end != 50 {
				t.Fatalf("%s: %d records, reader at %d, end %d; want 50, 50, 50", what, len(got), r.Offset(), r.end)
			}
			want := someRecords(1)[0].Time
			if !got[0].Time.Equal(want) || got[0].Key != nil || got[0].Value != nil || got[2].Key == nil || len(got[2].Key) != 0 {
				t.Fatalf("%s: first records %+v %+v", what, got[0], got[2])
			}
			// From an offset inside a batch: the records before it are left out.
			if got, r, err := decodeFrame(frame, maxFetchVersion, ReadCommitted, 12); err != nil || len(got) != 38 || got[0].Offset != 12 || r.Offset() != 50 {
				t.Fatalf("%s from 12: %d records from %d, reader at %d, %v", what, len(got), got[0].Offset, r.Offset(), err)
			}
		}
	}
}

// Transactions decoded from bytes: an aborted transaction's batch and its
// marker are skipped, a committed one's records kept and its marker
// skipped; read_uncommitted keeps both transactions' records.
func TestDecodeTransactions(t *testing.T) {
	var rs []byte
	aborted := encodeBatch(t, 2, compress.Snappy, 0, someRecords(2)...)
	setBatch(aborted, int16(compress.Snappy)|attrTransactional, 7)
	committed := encodeBatch(t, 2, 0, 2, someRecords(2)...)
	setBatch(committed, attrTransactional, 8)
	rs = append(rs, aborted...)
	rs = append(rs, committed...)
	rs = append(rs, controlBatch(t, 4, 7, false)...)
	rs = append(rs, controlBatch(t, 5, 8, true)...)
	rs = append(rs, encodeBatch(t, 2, 0, 6, someRecords(1)...)...)
	frame := fetchFrame(maxFetchVersion, 7, []abortedTxn{{producer: 7, firstOffset: 0}}, rs)
	for iso, want := range map[Isolation]string{
		ReadCommitted:   "1s 2 3 4s 5s 6 ",
		ReadUncommitted: "0 1 2 3 4s 5s 6 ",
	} {
		got, r, err := decodeFrame(frame, maxFetchVersion, iso, 0)
		if err != nil {
			t.Fatal(err)
		}
		var s strings.Builder
		for _, rec := range got {
			fmt.Fprintf(&s, "%d", rec.Offset)
			if rec.Skip {
				s.WriteString("s")
			}
			s.WriteString(" ")
		}
		if s.String() != want || r.Offset() != 7 {
			t.Fatalf("%v: %q at %d, want %q at 7", iso, s.String(), r.Offset(), want)
		}
		sameRecords(t, iso.String(), got, legacyDecode(t, frame, maxFetchVersion, iso))
	}
}

// A legacy message set (magic 1) is read through kafka-go's decoding.
func TestDecodeLegacyMessageSet(t *testing.T) {
	recs := someRecords(3)
	for i := range recs {
		recs[i].Offset = int64(i)
	}
	frame := fetchFrame(maxFetchVersion, 3, nil, encodeBatch(t, 1, 0, 0, recs...))
	got, r, err := decodeFrame(frame, maxFetchVersion, ReadCommitted, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || r.Offset() != 3 || string(got[2].Value) != `{"object_id":2}{"object_id":2}{"object_id":2}` {
		t.Fatalf("%d records, reader at %d: %+v", len(got), r.Offset(), got)
	}
}

// A batch whose checksum does not match is an error, and the reader stays
// where it was; a batch the broker cut short at the end is left for the
// next fetch.
func TestDecodeBadAndPartialBatches(t *testing.T) {
	good := encodeBatch(t, 2, 0, 0, someRecords(3)...)
	bad := bytes.Clone(good)
	bad[len(bad)-3] ^= 0x20
	_, r, err := decodeFrame(fetchFrame(maxFetchVersion, 3, nil, bad), maxFetchVersion, ReadCommitted, 0)
	if err == nil || !strings.Contains(err.Error(), "crc32c") || r.Offset() != 0 {
		t.Fatalf("corrupt batch: %v, reader at %d", err, r.Offset())
	}
	next := encodeBatch(t, 2, 0, 3, someRecords(3)...)
	for cut := 1; cut < len(next); cut += 5 {
		rs := append(bytes.Clone(good), next[:cut]...)
		got, r, err := decodeFrame(fetchFrame(maxFetchVersion, 6, nil, rs), maxFetchVersion, ReadCommitted, 0)
		if err != nil || len(got) != 3 || r.Offset() != 3 {
			t.Fatalf("second batch cut at %d: %d records, reader at %d, %v", cut, len(got), r.Offset(), err)
		}
	}
	// A bad batch after a good one ends the fetch at it, with no error:
	// the next fetch starts at the bad batch and says so.
	rs := append(bytes.Clone(good), bad...)
	binary.BigEndian.PutUint64(rs[len(good):], 3)
	if got, r, err := decodeFrame(fetchFrame(maxFetchVersion, 6, nil, rs), maxFetchVersion, ReadCommitted, 0); err != nil || len(got) != 3 || r.Offset() != 3 {
		t.Fatalf("good then bad batch: %d records, reader at %d, %v", len(got), r.Offset(), err)
	}
}

// sampleFrame is an answer with plain, compressed, transactional and
// control batches, and where each batch starts in it.
func sampleFrame(t testing.TB) ([]byte, []int) {
	var rs []byte
	var starts []int
	add := func(b []byte) {
		starts = append(starts, len(rs))
		rs = append(rs, b...)
	}
	add(encodeBatch(t, 2, 0, 0, someRecords(4)...))
	add(encodeBatch(t, 2, compress.Gzip, 4, someRecords(5)...))
	txn := encodeBatch(t, 2, compress.Lz4, 9, someRecords(3)...)
	setBatch(txn, int16(compress.Lz4)|attrTransactional, 7)
	add(txn)
	add(controlBatch(t, 12, 7, false))
	add(encodeBatch(t, 2, compress.Zstd, 13, someRecords(4)...))
	add(encodeBatch(t, 2, compress.Snappy, 17, someRecords(4)...))
	frame := fetchFrame(maxFetchVersion, 21, []abortedTxn{{producer: 7, firstOffset: 9}}, rs)
	at := len(frame) - len(rs)
	for i := range starts {
		starts[i] += at
	}
	return frame, starts
}

// Cut or garbled answers give errors or fewer records, never a panic;
// garbled batches are also tried with their checksums made right again,
// so the record decoder and the codecs see the garbage.
func TestDecodeTruncatedAndGarbled(t *testing.T) {
	frame, starts := sampleFrame(t)
	if got, _, err := decodeFrame(frame, maxFetchVersion, ReadCommitted, 0); err != nil || len(got) != 19 {
		t.Fatalf("the sample: %d records, %v", len(got), err)
	}
	for cut := 8; cut < len(frame); cut++ {
		got, r, err := decodeFrame(frame[:cut], maxFetchVersion, ReadCommitted, 0)
		if err == nil && len(got) > 0 && got[len(got)-1].Offset >= 21 || r.Offset() > 21 {
			t.Fatalf("cut at %d: %d records, reader at %d, %v", cut, len(got), r.Offset(), err)
		}
	}
	batchOf := func(i int) (int, int) {
		for j := len(starts) - 1; j >= 0; j-- {
			if i >= starts[j] {
				end := len(frame)
				if j+1 < len(starts) {
					end = starts[j+1]
				}
				return starts[j], end
			}
		}
		return -1, -1
	}
	step := 1
	if raceEnabled { // the codecs run slowly under it
		step = 7
	}
	for i := 8; i < len(frame); i += step {
		for _, x := range []byte{0xff, 0x80, 0x01} {
			g := bytes.Clone(frame)
			g[i] ^= x
			got, _, _ := decodeFrame(g, maxFetchVersion, ReadCommitted, 0)
			// A checksum covers its batch from the checksum on: nothing of
			// a batch garbled there, or of a later one, is returned.
			s, e := batchOf(i)
			if base := int64(-1); s >= 0 && i >= s+batchCRCAt {
				base = int64(binary.BigEndian.Uint64(frame[s:]))
				if len(got) > 0 && got[len(got)-1].Offset >= base {
					t.Fatalf("byte %d of the batch at %d garbled: a record at %d returned", i-s, base, got[len(got)-1].Offset)
				}
			}
			if s >= 0 && i >= s+batchAttrsAt {
				resum(g[s:e])
				decodeFrame(g, maxFetchVersion, ReadUncommitted, 0)
			}
		}
	}
}

// Whatever the bytes, parsing and decoding end without a panic, and any
// records returned come in growing offsets the reader moved past.
func FuzzDecodeFetch(f *testing.F) {
	frame, _ := sampleFrame(f)
	f.Add(frame[8:], int16(maxFetchVersion))
	f.Add(fetchFrame(4, 3, nil, encodeBatch(f, 2, 0, 0, someRecords(3)...))[8:], int16(4))
	f.Fuzz(func(t *testing.T, body []byte, v int16) {
		frame := append(binary.BigEndian.AppendUint32(nil, 0), 0, 0, 0, 1)
		frame = append(frame, body...)
		got, r, err := decodeFrame(frame, v, ReadCommitted, 0)
		if err != nil && errors.Is(err, errLegacy) {
			t.Fatalf("legacy sets go to kafka-go, not to the caller: %v", err)
		}
		for i, rec := range got {
			if rec.Offset >= r.Offset() || i > 0 && rec.Offset <= got[i-1].Offset {
				t.Fatalf("record at %d after %d, reader at %d", rec.Offset, got[max(i-1, 0)].Offset, r.Offset())
			}
		}
	})
}

// Decoding a fetch answer allocates nothing once the reader's buffers
// have grown; a compressed batch costs at most its codec's reader, which
// kafka-go pools (and -race drops from pools at random).
func TestDecodeAllocations(t *testing.T) {
	for c, most := range map[compress.Compression]float64{compress.None: 0, compress.Snappy: 3, compress.Lz4: 3} {
		if raceEnabled && c != compress.None {
			continue
		}
		var rs []byte
		for i := range 3 {
			rs = append(rs, encodeBatch(t, 2, c, int64(i*20), someRecords(20)...)...)
		}
		frame := fetchFrame(maxFetchVersion, 60, []abortedTxn{{producer: 7, firstOffset: 100}}, rs)
		r := &PartitionReader{c: PartitionConfig{Topic: "t"}, end: -1}
		b := &fetchBufs{frame: frame}
		decode := func() {
			r.offset = 0
			if err := answerFrame(r, b, maxFetchVersion); err != nil || len(b.recs) != 60 {
				t.Fatalf("%v: %d records, %v", c, len(b.recs), err)
			}
		}
		decode()
		if n := testing.AllocsPerRun(20, decode); n > most {
			t.Fatalf("%v: %.1f allocations a fetch of 3 batches, want at most %.0f", c, n, most)
		}
	}
}

// A compressed batch that would decompress past the bound is an error.
func TestDecodeBoundsDecompression(t *testing.T) {
	defer func(n int) { maxBatchRecords = n }(maxBatchRecords)
	maxBatchRecords = 1000
	frame := fetchFrame(maxFetchVersion, 200, nil, encodeBatch(t, 2, compress.Gzip, 0, someRecords(200)...))
	if _, _, err := decodeFrame(frame, maxFetchVersion, ReadCommitted, 0); err == nil || !strings.Contains(err.Error(), "more than 1000 bytes") {
		t.Fatalf("a batch decompressing past 1000 bytes: %v", err)
	}
}
