package kafkaio

// fetchwire.go sends a Fetch request through kafka-go's Transport but reads
// the broker's answer itself, into a buffer the reader owns, and finds the
// one partition the reader asked for in it. kafka-go keeps the connection
// pooling, leader routing, TLS, SASL and version negotiation; what it no
// longer does is decode the records, which cost an allocation a record.

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// maxFetchVersion is the newest Fetch version parseFetch reads, and the
// newest kafka-go negotiates (v12 on is the flexible encoding).
const maxFetchVersion = 11

// maxFetchFrame bounds the size a broker's answer may announce.
const maxFetchFrame = 1 << 30

// fetchExchange is a Fetch request that takes over its own round trip:
// kafka-go's connection calls Required with the versions it negotiated,
// then RawExchange, which writes the request and reads the whole answer
// into frame. The Transport routes it to the partition's leader through
// Broker. One exchange is in flight at a time; the reader reads its fields
// only after the Transport's RoundTrip returned it.
type fetchExchange struct {
	req      fetchapi.Request
	clientID string
	id       int32 // correlation id of the last request
	version  int16 // the connection's Fetch version
	// frame is the answer as read: size, correlation id, body. The reader
	// hands in a buffer to reuse; RawExchange grows it as needed.
	frame []byte
}

// ApiKey is Fetch.
func (x *fetchExchange) ApiKey() protocol.ApiKey { return protocol.Fetch }

// Broker is the leader of the partition the request fetches.
func (x *fetchExchange) Broker(c protocol.Cluster) (protocol.Broker, error) { return x.req.Broker(c) }

// Required takes every exchange over (kafka-go's own encoder cannot write
// this type), remembering the version the connection negotiated.
func (x *fetchExchange) Required(versions map[protocol.ApiKey]int16) bool {
	x.version = versions[protocol.Fetch]
	return true
}

// RawExchange writes the request and reads the answer into x.frame.
func (x *fetchExchange) RawExchange(rw io.ReadWriter) (protocol.Message, error) {
	if x.version < 0 || x.version > maxFetchVersion {
		return nil, fmt.Errorf("fetch v%d is not supported", x.version)
	}
	x.id++
	if err := protocol.WriteRequest(rw, x.version, x.id, x.clientID, &x.req); err != nil {
		return nil, fmt.Errorf("cannot write fetch request: %w", err)
	}
	x.frame = slices.Grow(x.frame[:0], 8)[:4]
	if _, err := io.ReadFull(rw, x.frame); err != nil {
		return nil, fmt.Errorf("cannot read fetch response size: %w", err)
	}
	n := int(int32(binary.BigEndian.Uint32(x.frame)))
	if n < 4 || n > maxFetchFrame {
		return nil, fmt.Errorf("fetch response of %d bytes", n)
	}
	x.frame = slices.Grow(x.frame, n)[:4+n]
	if _, err := io.ReadFull(rw, x.frame[4:]); err != nil {
		return nil, fmt.Errorf("cannot read fetch response of %d bytes: %w", n, err)
	}
	if id := int32(binary.BigEndian.Uint32(x.frame[4:])); id != x.id {
		return nil, fmt.Errorf("fetch response has correlation id %d, want %d", id, x.id)
	}
	return x, nil
}

// body is the answer after its size and correlation id.
func (x *fetchExchange) body() []byte { return x.frame[8:] }

var (
	_ protocol.RawExchanger  = (*fetchExchange)(nil)
	_ protocol.BrokerMessage = (*fetchExchange)(nil)
)

// fetchAnswer is what a Fetch response says about one partition.
type fetchAnswer struct {
	errorCode     int16 // the response's own (v7 on)
	found         bool  // whether the response holds the partition
	partError     int16
	highWatermark int64
	aborted       []abortedTxn // aborted transactions (v4 on)
	records       []byte       // the record set, nil when null
}

// parseFetch reads a Fetch response body of the given version (v0-v11)
// and returns what it says about topic's partition, appending its aborted
// transactions to aborted. Records stay bytes, pointing into body.
func parseFetch(body []byte, version int16, topic string, partition int32, aborted []abortedTxn) (fetchAnswer, error) {
	a := fetchAnswer{aborted: aborted}
	fw := walkFetch(body, version)
	for fw.next() {
		// A partition not asked for appends past the one asked for,
		// never over it.
		p := readPartition(&fw.w, version, a.aborted[len(a.aborted):])
		if fw.w.err == nil && !a.found && string(fw.topic) == topic && p.partition == partition {
			a.found, a.partError, a.highWatermark = true, p.partError, p.highWatermark
			a.aborted, a.records = p.aborted, p.records
		}
	}
	a.errorCode = fw.code
	return a, fw.error()
}

// fetchWalk steps through a Fetch response body a partition at a time:
// after each next that returns true, the caller reads the partition at w
// with readPartition; topic is the partition's topic.
type fetchWalk struct {
	w       wire
	version int16
	code    int16 // the response's own error code (v7 on)
	topic   []byte
	topics  int // topics left after the current one
	parts   int // partitions left in the current topic
	bad     error
}

// walkFetch starts a walk of body, a Fetch response of the given version
// (v0-v11).
func walkFetch(body []byte, version int16) fetchWalk {
	fw := fetchWalk{w: wire{b: body}, version: version, parts: -1}
	if version < 0 || version > maxFetchVersion {
		fw.bad = fmt.Errorf("fetch response v%d is not supported", version)
		return fw
	}
	if version >= 1 {
		fw.w.int32() // throttle time
	}
	if version >= 7 {
		fw.code = fw.w.int16()
		fw.w.int32() // session id
	}
	fw.topics = fw.w.count(6)
	return fw
}

// next moves to the next partition, reporting false at the end or at an
// error.
func (fw *fetchWalk) next() bool {
	for fw.bad == nil && fw.w.err == nil {
		if fw.parts > 0 {
			fw.parts--
			return true
		}
		if fw.topics <= 0 {
			return false
		}
		fw.topics--
		fw.topic = fw.w.string16()
		fw.parts = fw.w.count(14)
	}
	return false
}

// error says why the walk stopped early, if it did.
func (fw *fetchWalk) error() error {
	if fw.bad != nil {
		return fw.bad
	}
	if fw.w.err != nil {
		return fmt.Errorf("fetch response v%d, at byte %d of %d: %w", fw.version, fw.w.off, len(fw.w.b), fw.w.err)
	}
	return nil
}

// partitionAnswer is one partition of a Fetch response.
type partitionAnswer struct {
	partition     int32
	partError     int16
	highWatermark int64
	aborted       []abortedTxn
	records       []byte
}

// readPartition reads one partition of a Fetch response, appending its
// aborted transactions to aborted.
func readPartition(w *wire, version int16, aborted []abortedTxn) partitionAnswer {
	p := partitionAnswer{partition: w.int32(), partError: w.int16(), highWatermark: w.int64(), aborted: aborted}
	if version >= 4 {
		w.int64() // last stable offset
	}
	if version >= 5 {
		w.int64() // log start offset
	}
	if version >= 4 {
		for range w.count(16) { // -1, a null array, reads as none
			p.aborted = append(p.aborted, abortedTxn{producer: w.int64(), firstOffset: w.int64()})
		}
	}
	if version >= 11 {
		w.int32() // preferred read replica
	}
	p.records = w.bytes32()
	return p
}
