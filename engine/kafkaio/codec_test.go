package kafkaio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/segmentio/kafka-go"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"

	"github.com/geckohook/geckohook/internal/testenv"
)

// Batches kafka-go's Writer compresses with each codec, stored by a real
// broker, read back with the keys, values, times and offsets written; a
// null key or value stays null, an empty one empty.
func TestPartitionReaderReadsEveryCodec(t *testing.T) {
	brokers := []string{testenv.Kafka(t, 1).Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	codecs := []kafka.Compression{0, kafka.Gzip, kafka.Snappy, kafka.Lz4, kafka.Zstd}
	for _, c := range codecs {
		topic := fmt.Sprintf("codec-%d", c)
		if err := EnsureTopics(ctx, brokers, Topic{Name: topic, Partitions: 1}); err != nil {
			t.Fatal(err)
		}
		w := NewWriter(brokers, topic)
		w.Compression = c
		var want []kafka.Message
		for batch := range 3 {
			msgs := codecMessages(batch*30, 30)
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				t.Fatalf("%v: %v", c, err)
			}
			want = append(want, msgs...)
		}
		_ = w.Close()

		r := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: topic, MaxWait: 20 * time.Millisecond}, 0)
		got := fetchAtLeast(t, ctx, r, len(want))
		r.Close()
		if r.x.version != maxFetchVersion {
			t.Fatalf("fetch v%d negotiated, want v%d", r.x.version, maxFetchVersion)
		}
		// The broker sent the batches as the writer compressed them.
		a, err := parseFetch(r.bufs[1].frame[8:], r.x.version, topic, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b, _, ok, err := nextBatch(a.records); !ok || err != nil || b.attrs&attrCompression != int16(c) {
			t.Fatalf("%v: the last answer's first batch has attributes %#x (%v, %v)", c, b.attrs, ok, err)
		}
		for i, g := range got {
			m := want[i]
			if g.Offset != int64(i) || g.Skip || !g.Time.Equal(m.Time) ||
				!bytes.Equal(g.Key, m.Key) || (g.Key == nil) != (m.Key == nil) ||
				!bytes.Equal(g.Value, m.Value) || (g.Value == nil) != (m.Value == nil) {
				t.Fatalf("%v: record %d is {%d %v %q %q}, want {%d %v %q %q}", c, i, g.Offset, g.Time, g.Key, g.Value, i, m.Time, m.Key, m.Value)
			}
		}
	}
}

// codecMessages returns n messages from the from-th on, with null, empty
// and filled keys and values, and times 13 ms apart.
func codecMessages(from, n int) []kafka.Message {
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		k := from + i
		m := kafka.Message{Time: time.UnixMilli(1_700_000_000_000 + int64(k)*13)}
		switch k % 3 {
		case 1:
			m.Key, m.Value = []byte{}, []byte{}
		case 2:
			m.Key = fmt.Appendf(nil, "acc_%d", k)
			m.Value = []byte(strings.Repeat(fmt.Sprintf(`{"object_id":%d}`, k), k%7+1))
		}
		msgs[i] = m
	}
	return msgs
}

// A fetch given up while the broker still holds it (its context ended)
// leaves the reader whole: the next fetch reads on.
func TestPartitionReaderFetchGivenUp(t *testing.T) {
	brokers, ctx := eventsTopic(t)
	r := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", MaxWait: time.Second}, 0)
	defer r.Close()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	// The transport gives up on the context, or the connection on the
	// read deadline it takes from the context, whichever comes first.
	if _, err := r.Fetch(short); !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a fetch past its deadline: %v", err)
	}
	produce(t, testenv.KafkaProducer(t, brokers, "events", ""), "after-1", "after-2")
	got := fetchAtLeast(t, ctx, r, 2)
	if string(got[0].Value) != "after-1" || string(got[1].Value) != "after-2" || r.Offset() != 2 {
		t.Fatalf("after a fetch given up: %q %q, reader at %d", got[0].Value, got[1].Value, r.Offset())
	}
}

// An offset the partition does not hold is an error saying so, and the
// reader reads on from the earliest offset.
func TestPartitionReaderOffsetOutOfRange(t *testing.T) {
	brokers, ctx := eventsTopic(t)
	produce(t, testenv.KafkaProducer(t, brokers, "events", ""), "r1", "r2")
	r := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", MaxWait: 20 * time.Millisecond}, 100)
	defer r.Close()
	if _, err := r.Fetch(ctx); !errors.Is(err, kafka.OffsetOutOfRange) || r.Offset() != 0 {
		t.Fatalf("fetch at 100 of 2: %v, reader at %d", err, r.Offset())
	}
	if got := fetchAtLeast(t, ctx, r, 2); string(got[0].Value) != "r1" || string(got[1].Value) != "r2" {
		t.Fatalf("after the reset: %q %q", got[0].Value, got[1].Value)
	}
}

// answerOther is a transport that answers a fetch without exchanging it
// through a kafka-go connection.
type answerOther struct{}

func (answerOther) RoundTrip(context.Context, net.Addr, kafka.Request) (kafka.Response, error) {
	return &fetchapi.Response{}, nil
}

// A transport that does not let the fetch exchange its own bytes is an
// error, not records read from nowhere.
func TestPartitionReaderNeedsTheExchange(t *testing.T) {
	r := NewPartitionReader(PartitionConfig{Brokers: []string{"127.0.0.1:1"}, Topic: "events", Transport: answerOther{}}, 0)
	if recs, err := r.Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "own exchange") {
		t.Fatalf("%d records, %v", len(recs), err)
	}
}

// The buffer the next answer lands in shares no memory with the records of
// the last two fetches that returned some, however many fetches that
// return nothing come between: the dispatcher may still hold both. So too
// when a session fetches, copying each partition's records out of its
// answer.
func TestPartitionReaderAnswersLandApart(t *testing.T) {
	brokers, ctx := eventsTopic(t)
	plain := testenv.KafkaProducer(t, brokers, "events", "")
	s := NewFetchSession(SessionConfig{Brokers: brokers, Topic: "events", MaxWait: 10 * time.Millisecond})
	defer s.Close()
	for round, session := range []*FetchSession{nil, s} {
		base := 4 * round
		r := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", MaxWait: 10 * time.Millisecond, Session: session}, int64(base))
		defer r.Close()
		var live [][]Record
		for i := range 4 {
			produce(t, plain, fmt.Sprintf("v%d", base+i))
			live = append(live, fetchAtLeast(t, ctx, r, 1))
			for range 2 {
				if recs, err := r.Fetch(ctx); err != nil || len(recs) != 0 {
					t.Fatalf("a fetch with nothing new: %d records, %v", len(recs), err)
				}
				next := r.bufs[0].frame
				for _, recs := range live[max(len(live)-2, 0):] {
					for _, rec := range recs {
						if overlap(next, rec.Value) {
							t.Fatalf("session %v: the next answer lands on %q at %d, which the caller may still hold", session != nil, rec.Value, rec.Offset)
						}
					}
				}
			}
		}
		for i, recs := range live[2:] {
			if want := fmt.Sprintf("v%d", base+i+2); string(recs[0].Value) != want {
				t.Fatalf("session %v: fetch %d's record reads %q, want %q", session != nil, i+2, recs[0].Value, want)
			}
		}
	}
}

// overlap says whether a and b share memory (up to a's capacity).
func overlap(a, b []byte) bool {
	if cap(a) == 0 || len(b) == 0 {
		return false
	}
	as := uintptr(unsafe.Pointer(unsafe.SliceData(a)))
	bs := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return bs < as+uintptr(cap(a)) && as < bs+uintptr(len(b))
}
