package kafkaio

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/segmentio/kafka-go/protocol"

	"github.com/geckohook/geckohook/internal/testenv"
)

// fill writes n events to partition 0 of a new topic and returns its
// brokers and name.
func fill(b *testing.B, n int) ([]string, string) {
	b.Helper()
	k := testenv.Kafka(b, 1)
	brokers, topic := []string{k.Addr()}, "bench"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := EnsureTopics(ctx, brokers, Topic{Name: topic, Partitions: 1}); err != nil {
		b.Fatal(err)
	}
	w := NewWriter(brokers, topic)
	w.BatchSize = 1000
	defer w.Close()
	msgs := make([]kafka.Message, 0, 1000)
	for i := range n {
		msgs = append(msgs, kafka.Message{Key: []byte("acc_1"),
			Value: fmt.Appendf(nil, `{"account_id":"acc_1","event":"order.create","object_id":%d}`, i)})
		if len(msgs) == cap(msgs) || i == n-1 {
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				b.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	return brokers, topic
}

// The intake's cost per event: kafka-go's Reader (what the dispatcher used
// before) against the PartitionReader, reading the same events from the
// embedded broker. Allocations per op are per event.
func BenchmarkIntake(b *testing.B) {
	b.Run("reader=kafka-go", func(b *testing.B) {
		brokers, topic := fill(b, b.N)
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: 0, MinBytes: 1,
			MaxBytes: 8 << 20, MaxWait: 100 * time.Millisecond, QueueCapacity: 1024})
		defer r.Close()
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := r.FetchMessage(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reader=partition", func(b *testing.B) {
		brokers, topic := fill(b, b.N)
		r := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: topic, MaxWait: 100 * time.Millisecond}, 0)
		defer r.Close()
		b.ReportAllocs()
		b.ResetTimer()
		for n := 0; n < b.N; {
			recs, err := r.Fetch(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			n += len(recs)
		}
	})
}

// eventsFrame is a Fetch answer like the dispatcher's: batches of 1000
// events as geckohook's writer sends them (uncompressed unless c says),
// about 1 MiB in all.
func eventsFrame(b *testing.B, c compress.Compression) ([]byte, int) {
	b.Helper()
	const batches, per = 6, 1000
	var rs []byte
	for i := range batches {
		recs := make([]protocol.Record, per)
		for j := range recs {
			n := i*per + j
			recs[j] = protocol.Record{Time: time.UnixMilli(1_700_000_000_000 + int64(n)),
				Key:   protocol.NewBytes(fmt.Appendf(nil, "acc_%d", n%97)),
				Value: protocol.NewBytes(fmt.Appendf(nil, `{"account_id":"acc_%d","event":"order.create","object_id":%d,"timestamp":1700000000}`, n%97, n))}
		}
		rs = append(rs, encodeBatch(b, 2, c, int64(i*per), recs...)...)
	}
	return fetchFrame(maxFetchVersion, batches*per, nil, rs), batches * per
}

// The cost of turning one fetch answer into records, without the broker:
// kafka-go's decoding (what the reader did before) against the reader's
// own. Metrics per record.
func BenchmarkFetchDecode(b *testing.B) {
	for _, c := range []compress.Compression{compress.None, compress.Snappy, compress.Zstd} {
		frame, n := eventsFrame(b, c)
		run := func(b *testing.B, decode func(r *PartitionReader, buf *fetchBufs) error) {
			r := &PartitionReader{c: PartitionConfig{Topic: "t"}, end: -1}
			var bufs [3]fetchBufs
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			cpu0 := testenv.OwnCPU()
			b.ResetTimer()
			for i := range b.N {
				r.offset = 0
				buf := &bufs[i%3]
				buf.frame = frame
				if err := decode(r, buf); err != nil || len(buf.recs) != n {
					b.Fatalf("%d records, %v", len(buf.recs), err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
			// CPU time of the whole process (GC included), which the other
			// processes of a busy machine do not inflate as they do wall time.
			b.ReportMetric(float64(testenv.OwnCPU()-cpu0)/float64(b.N*n), "cpu-ns/record")
			b.ReportMetric(float64(testing.AllocsPerRun(1, func() { _ = decode(r, &bufs[0]) }))/float64(n), "allocs/record")
		}
		b.Run(fmt.Sprintf("codec=%v/decoder=kafka-go", c), func(b *testing.B) {
			run(b, func(r *PartitionReader, buf *fetchBufs) error {
				buf.buf, buf.recs, buf.version = buf.buf[:0], buf.recs[:0], maxFetchVersion
				a, err := r.parse(buf)
				if err != nil {
					return err
				}
				return r.readLegacy(buf, &a)
			})
		})
		b.Run(fmt.Sprintf("codec=%v/decoder=geckohook", c), func(b *testing.B) {
			run(b, func(r *PartitionReader, buf *fetchBufs) error { return answerFrame(r, buf, maxFetchVersion) })
		})
	}
}
