package loadtest

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/embedded"
	"github.com/geckohook/geckohook/engine/kafkaio"
)

// The generator's events land where geckohook's own writer would put them
// (same partitioner), each once, with the record time the ledger keeps.
func TestGeneratorPartitionsAndTimes(t *testing.T) {
	const topic, partitions, events = "gen.events", 4, 300
	ctx, brokers := genKafka(t, topic, partitions)
	p := &Plan{Event: "order.create", Apps: []PlanApp{{Name: "app"}}}
	for range 7 {
		p.AddAccount(0, []int{0}, make([]EndpointBehaviour, 1))
	}
	l := NewLedger(p, events)
	gen := NewGenerator(brokers, topic, p, l)
	defer gen.Close()
	before := time.Now().Truncate(time.Millisecond)
	n, err := gen.Run(ctx, Flood{Count: events, Rate: 20000}, nil)
	if err != nil || n != events {
		t.Fatalf("produced %d of %d: %v", n, events, err)
	}
	after := time.Now()

	want := kafkaio.NewWriter(brokers, topic).Balancer
	parts := []int{0, 1, 2, 3}
	seen := make(map[int]bool)
	for part := range partitions {
		r := kafkaio.NewPartitionReader(kafkaio.PartitionConfig{Brokers: brokers, Topic: topic, Partition: part, MaxWait: 50 * time.Millisecond}, kafka.FirstOffset)
		for end := false; !end; {
			recs, err := r.Fetch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			end = len(recs) == 0 && r.Lag() == 0
			for _, rec := range recs {
				if got := want.Balance(kafka.Message{Key: rec.Key}, parts...); got != part {
					t.Fatalf("key %s in partition %d, geckohook's writer puts it in %d", rec.Key, part, got)
				}
				e := scanObjectID(rec.Value)
				if e < 0 || e >= events || seen[e] || string(rec.Key) != AccountName(p.EventAccount(e)) {
					t.Fatalf("record %q (key %s): unknown, duplicate or with the wrong key", rec.Value, rec.Key)
				}
				seen[e] = true
				if at := l.ProducedAt(e); rec.Time.UnixMilli() != at.UnixMilli() || rec.Time.Before(before) || rec.Time.After(after) {
					t.Fatalf("event %d: record time %v, the ledger's produce time %v (run %v..%v)", e, rec.Time, at, before, after)
				}
			}
		}
		r.Close()
	}
	if len(seen) != events {
		t.Fatalf("read %d events of %d", len(seen), events)
	}
}

// A batch the broker refuses is tried again, up to 5 times, and counted.
func TestGeneratorRetriesCounted(t *testing.T) {
	const topic = "gen.gone"
	ctx, brokers := genKafka(t, topic, 2)
	p := onePairPerEvent()
	gen := NewGenerator(brokers, topic, p, NewLedger(p, 10))
	defer gen.Close()
	if n, err := gen.Run(ctx, Flood{Count: 1}, nil); n != 1 || err != nil || gen.Retried() != 0 {
		t.Fatalf("first event: %d produced, %v, %d retried", n, err, gen.Retried())
	}
	// The topic goes; the generator still knows its partitions.
	c := &kafka.Client{Addr: kafka.TCP(brokers...)}
	if _, err := c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{topic}}); err != nil {
		t.Fatal(err)
	}
	n, err := gen.Run(ctx, Flood{From: 1, Count: 1}, nil)
	if n != 0 || err == nil || gen.Retried() != produceTries-1 {
		t.Fatalf("into a deleted topic: %d produced, %v, %d retried; want an error after %d retries", n, err, gen.Retried(), produceTries-1)
	}
}

// genKafka starts an embedded broker with topic of partitions, and returns
// a context bounding the test and the broker's address.
func genKafka(t *testing.T, topic string, partitions int) (context.Context, []string) {
	t.Helper()
	k, err := embedded.StartKafka(embedded.KafkaOptions{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	brokers := []string{k.Addr()}
	if err := kafkaio.EnsureTopics(ctx, brokers, kafkaio.Topic{Name: topic, Partitions: partitions}); err != nil {
		t.Fatal(err)
	}
	return ctx, brokers
}
