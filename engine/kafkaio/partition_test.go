package kafkaio

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/geckohook/geckohook/internal/testenv"
)

func produce(t *testing.T, cl *kgo.Client, values ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, v := range values {
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte(v), Partition: 0}).FirstErr(); err != nil {
			t.Fatalf("produce %s: %v", v, err)
		}
	}
}

func begin(t *testing.T, cl *kgo.Client) {
	t.Helper()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
}

func end(t *testing.T, cl *kgo.Client, commit kgo.TransactionEndTry) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.EndTransaction(ctx, commit); err != nil {
		t.Fatal(err)
	}
}

// readAll fetches n times, returning the values read and checking that the
// offsets returned only grow.
func readAll(t *testing.T, r *PartitionReader, n int) []string {
	t.Helper()
	var got []string
	last := int64(-1)
	for range n {
		recs, err := r.Fetch(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			if rec.Offset <= last {
				t.Fatalf("offset %d after %d", rec.Offset, last)
			}
			last = rec.Offset
			if !rec.Skip {
				got = append(got, string(rec.Value))
			}
		}
	}
	return got
}

// Against a real broker and real transactional producers: a committed
// transaction is read, an aborted one never, two producers interleave on
// one partition with plain records between, and an open transaction holds
// every later record back until it ends.
func TestPartitionReaderReadsCommittedOnly(t *testing.T) {
	brokers, ctx := eventsTopic(t)
	plain, a, b, c := testenv.KafkaProducer(t, brokers, "events", ""), testenv.KafkaProducer(t, brokers, "events", "a"),
		testenv.KafkaProducer(t, brokers, "events", "b"), testenv.KafkaProducer(t, brokers, "events", "c")

	produce(t, plain, "p1")
	begin(t, a)
	produce(t, a, "a1", "a2")
	begin(t, b)
	produce(t, b, "b1")
	produce(t, plain, "p2")
	produce(t, a, "a3")
	end(t, a, kgo.TryCommit)
	produce(t, b, "b2")
	end(t, b, kgo.TryAbort)
	produce(t, plain, "p3")
	begin(t, c)
	produce(t, c, "c1")
	produce(t, plain, "p4")

	committed := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", Isolation: ReadCommitted, MaxWait: 50 * time.Millisecond}, kafka.FirstOffset)
	defer committed.Close()
	got := readAll(t, committed, 5)
	if want := []string{"p1", "a1", "a2", "p2", "a3", "p3"}; !slices.Equal(got, want) {
		t.Fatalf("read_committed with c open: %v, want %v", got, want)
	}
	uncommitted := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", Isolation: ReadUncommitted, MaxWait: 50 * time.Millisecond}, kafka.FirstOffset)
	defer uncommitted.Close()
	if got, want := readAll(t, uncommitted, 5), []string{"p1", "a1", "a2", "b1", "p2", "a3", "b2", "p3", "c1", "p4"}; !slices.Equal(got, want) {
		t.Fatalf("read_uncommitted: %v, want %v", got, want)
	}

	// Lag counts every offset not read yet, up to the end (12), also those
	// an open transaction holds back from read_committed.
	for iso, want := range map[Isolation]int64{ReadCommitted: 11, ReadUncommitted: 11} {
		one := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", Isolation: iso, MaxBytes: 1}, 0)
		if _, err := one.Fetch(ctx); err != nil {
			t.Fatal(err)
		}
		if one.Offset() != 1 || one.Lag() != want {
			t.Fatalf("%v after one batch: offset %d lag %d, want 1 and %d", iso, one.Offset(), one.Lag(), want)
		}
		one.Close()
	}
	// read_committed has read all it may, and the open transaction shows
	// as lag: c1 and p4 wait behind it; read_uncommitted has read all.
	if committed.Lag() != 2 || uncommitted.Lag() != 0 {
		t.Fatalf("lag %d (committed), %d (uncommitted) with c open, want 2 and 0", committed.Lag(), uncommitted.Lag())
	}
	end(t, c, kgo.TryCommit)
	produce(t, plain, "p5")
	if got, want := readAll(t, committed, 5), []string{"c1", "p4", "p5"}; !slices.Equal(got, want) {
		t.Fatalf("read_committed after c committed: %v, want %v", got, want)
	}
	// Every marker was read past: the reader stands at the end.
	lo, err := (&kafka.Client{Addr: kafka.TCP(brokers...)}).ListOffsets(ctx, &kafka.ListOffsetsRequest{
		Topics: map[string][]kafka.OffsetRequest{"events": {kafka.LastOffsetOf(0)}}})
	if err != nil {
		t.Fatal(err)
	}
	if end := lo.Topics["events"][0].LastOffset; committed.Offset() != end {
		t.Fatalf("reader at %d, partition ends at %d", committed.Offset(), end)
	}
}

// A fetch that holds only an aborted transaction and its marker moves the
// offset past them, so nothing stalls behind it.
func TestPartitionReaderMovesPastAbortedOnly(t *testing.T) {
	brokers, ctx := eventsTopic(t)
	a := testenv.KafkaProducer(t, brokers, "events", "a")
	begin(t, a)
	produce(t, a, "x1", "x2", "x3")
	end(t, a, kgo.TryAbort)
	r := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", MaxWait: 50 * time.Millisecond}, 0)
	defer r.Close()
	var skipped []int64
	for range 3 {
		recs, err := r.Fetch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			if !rec.Skip {
				t.Fatalf("aborted record returned: %q at %d", rec.Value, rec.Offset)
			}
			skipped = append(skipped, rec.Offset)
		}
	}
	if r.Offset() != 4 || fmt.Sprint(skipped) != "[0 1 2 3]" {
		t.Fatalf("reader at %d having skipped up to %v, want 4 after [0 1 2 3] (one batch a record, then the marker)", r.Offset(), skipped)
	}
}

// A fetch's records stay whole through the next fetch that returns
// records, also when a fetch that returns nothing comes between (the
// dispatcher fans one batch out while its fetcher reads the next).
func TestPartitionReaderKeepsTheLastFetchWhole(t *testing.T) {
	brokers, ctx := eventsTopic(t)
	plain := testenv.KafkaProducer(t, brokers, "events", "")
	produce(t, plain, "first-1", "first-2")
	r := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", MaxWait: 20 * time.Millisecond}, 0)
	defer r.Close()
	first := fetchAtLeast(t, ctx, r, 2)
	if recs, err := r.Fetch(ctx); err != nil || len(recs) != 0 {
		t.Fatalf("a fetch with nothing new: %d records, %v", len(recs), err)
	}
	produce(t, plain, "other-3", "other-4")
	fetchAtLeast(t, ctx, r, 2)
	if string(first[0].Value) != "first-1" || string(first[1].Value) != "first-2" || first[0].Offset != 0 || first[1].Offset != 1 {
		t.Fatalf("the first fetch's records changed under the caller: %q@%d %q@%d",
			first[0].Value, first[0].Offset, first[1].Value, first[1].Offset)
	}
}

// eventsTopic starts the embedded broker with a one-partition topic
// "events", and returns its brokers and a context bounding the test.
func eventsTopic(t *testing.T) ([]string, context.Context) {
	t.Helper()
	brokers := []string{testenv.Kafka(t, 1).Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := EnsureTopics(ctx, brokers, Topic{Name: "events", Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	return brokers, ctx
}

// fetchAtLeast fetches until n records have come, and returns them.
func fetchAtLeast(t *testing.T, ctx context.Context, r *PartitionReader, n int) []Record {
	t.Helper()
	var got []Record
	for len(got) < n {
		recs, err := r.Fetch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, recs...)
	}
	return got
}
