package kafkaio

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

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
