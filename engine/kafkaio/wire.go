package kafkaio

// wire.go reads the fixed-width and varint fields of the Kafka protocol
// out of a byte slice, checking every read against the slice's end.

import (
	"encoding/binary"
	"errors"
)

// errTruncated says a field runs past the end of the bytes that hold it.
var errTruncated = errors.New("truncated")

// errVarint says a varint runs past 64 bits.
var errVarint = errors.New("varint overflows 64 bits")

// wire is a cursor over bytes in Kafka's big-endian encoding. A read past
// the end sets err and returns zero values, so a parser checks err once
// after a run of reads instead of after each.
type wire struct {
	b   []byte
	off int
	err error
}

// take returns the next n bytes, or nil (and sets err) when fewer remain.
func (w *wire) take(n int) []byte {
	if w.err != nil {
		return nil
	}
	if n < 0 || n > len(w.b)-w.off {
		w.err = errTruncated
		w.off = len(w.b)
		return nil
	}
	s := w.b[w.off : w.off+n : w.off+n]
	w.off += n
	return s
}

func (w *wire) int16() int16 {
	if b := w.take(2); b != nil {
		return int16(binary.BigEndian.Uint16(b))
	}
	return 0
}

func (w *wire) int32() int32 {
	if b := w.take(4); b != nil {
		return int32(binary.BigEndian.Uint32(b))
	}
	return 0
}

func (w *wire) int64() int64 {
	if b := w.take(8); b != nil {
		return int64(binary.BigEndian.Uint64(b))
	}
	return 0
}

// string16 returns a string with an int16 length (nil for a null one).
func (w *wire) string16() []byte {
	n := w.int16()
	if n < 0 {
		return nil
	}
	return w.take(int(n))
}

// bytes32 returns bytes with an int32 length (nil for null ones).
func (w *wire) bytes32() []byte {
	n := w.int32()
	if n < 0 {
		return nil
	}
	return w.take(int(n))
}

// count returns an array's int32 length (-1 for a null array), setting
// err when the rest could not hold that many elements of min bytes each.
func (w *wire) count(min int) int {
	n := int(w.int32())
	if w.err == nil && n > 0 && n > (len(w.b)-w.off)/min {
		w.err = errTruncated
		w.off = len(w.b)
		return 0
	}
	return n
}

// varint returns a zigzag varint (Kafka's varint and varlong).
func (w *wire) varint() int64 {
	if w.err != nil {
		return 0
	}
	if w.off < len(w.b) && w.b[w.off] < 0x80 { // one byte: most lengths and deltas
		u := w.b[w.off]
		w.off++
		return int64(u>>1) ^ -int64(u&1)
	}
	v, n := binary.Varint(w.b[w.off:])
	if n <= 0 {
		w.err = errTruncated
		if n < 0 {
			w.err = errVarint
		}
		w.off = len(w.b)
		return 0
	}
	w.off += n
	return v
}

// rest is how many bytes are left.
func (w *wire) rest() int { return len(w.b) - w.off }
