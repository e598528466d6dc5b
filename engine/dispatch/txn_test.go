package dispatch

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
)

// txnProducer writes events for one account to partition 0 of the events
// topic, in transactions when id is set: a real transactional producer.
func txnProducer(t *testing.T, e *env, id string) *kgo.Client {
	return testenv.KafkaProducer(t, []string{e.broker}, "geckohook.events", id)
}

func produceObjects(t *testing.T, cl *kgo.Client, from, to int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := from; i <= to; i++ {
		v := fmt.Sprintf(`{"account_id":"acc-t","event":"order.create","object_id":%d}`, i)
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte("acc-t"), Value: []byte(v), Partition: 0}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

func txn(t *testing.T, cl *kgo.Client, from, to int, end kgo.TransactionEndTry) {
	t.Helper()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produceObjects(t, cl, from, to)
	if err := cl.EndTransaction(context.Background(), end); err != nil {
		t.Fatal(err)
	}
}

// Events from transactional producers: committed transactions are
// delivered once each, aborted ones never (also one aborted after a
// dispatcher restart in its middle), plain records in between are
// delivered, no transaction marker is dead-lettered, and the committed
// offsets reach the partition's end.
func TestTransactionalIntake(t *testing.T) {
	e := startEnv(t, loadtest.Always(200))
	e.hook("acc-t", "order.create", "/t")
	plain, a, b, c := txnProducer(t, e, ""), txnProducer(t, e, "a"), txnProducer(t, e, "b"), txnProducer(t, e, "c")

	txn(t, a, 1, 10, kgo.TryCommit)
	txn(t, a, 101, 110, kgo.TryAbort)
	produceObjects(t, plain, 201, 203)
	// Two producers interleaved: b commits, c aborts.
	if err := b.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := c.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produceObjects(t, b, 11, 12)
	produceObjects(t, c, 111, 112)
	produceObjects(t, plain, 204, 204)
	produceObjects(t, b, 13, 13)
	if err := b.EndTransaction(context.Background(), kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	if err := c.EndTransaction(context.Background(), kgo.TryAbort); err != nil {
		t.Fatal(err)
	}
	e.waitReceived("/t", 15) // 1-13 and 201-204, less what is still in flight

	// An open transaction holds every later record back, across a restart
	// of the dispatcher, and is then aborted.
	if err := a.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produceObjects(t, a, 121, 125)
	produceObjects(t, plain, 205, 205)
	e.stop()
	e.disp, e.stop = e.startDispatcher()
	// The new dispatcher has read partition 0 up to the open transaction:
	// its lag counts the 6 records held back (121-125 and 205).
	lag, _ := e.disp.lagGauge(0)
	testenv.WaitFor(t, 30*time.Second, func() error {
		if v := lag.Get(); v != 6 {
			return fmt.Errorf("partition 0 lag %v, want the 6 records behind the open transaction", v)
		}
		return nil
	})
	if n := objectIDs(e.receivedOn("/t"))[205]; n != 0 {
		t.Fatalf("event 205 delivered while the transaction before it was open")
	}
	if err := a.EndTransaction(context.Background(), kgo.TryAbort); err != nil {
		t.Fatal(err)
	}
	produceObjects(t, plain, 206, 206)

	want := map[int]int{}
	for _, r := range [][2]int{{1, 13}, {201, 206}} {
		for i := r[0]; i <= r[1]; i++ {
			want[i] = 1
		}
	}
	testenv.WaitFor(t, 30*time.Second, func() error {
		committed, end := e.committedAndEnd()
		if got := len(e.receivedOn("/t")); got < len(want) || committed != end {
			return fmt.Errorf("%d of %d delivered, committed %d of %d", got, len(want), committed, end)
		}
		return nil
	})
	got := objectIDs(e.receivedOn("/t"))
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered %v\nwant      %v", got, want)
	}
	if n := e.disp.Stats.DeadLettered.Load(); n != 0 {
		t.Fatalf("%d records dead-lettered, want none (transaction markers are not events)", n)
	}
}

// With read_uncommitted, aborted records are delivered too (today's
// behaviour of a plain Kafka reader), and markers are still never events.
func TestReadUncommittedIntake(t *testing.T) {
	e := startEnvWith(t, loadtest.Always(200), func(o *Options) { o.Isolation = kafkaio.ReadUncommitted })
	e.hook("acc-t", "order.create", "/t")
	a := txnProducer(t, e, "a")
	txn(t, a, 1, 3, kgo.TryCommit)
	txn(t, a, 101, 103, kgo.TryAbort)
	e.waitReceived("/t", 6)
	testenv.WaitFor(t, 30*time.Second, func() error {
		if committed, end := e.committedAndEnd(); committed != end {
			return fmt.Errorf("committed %d of %d", committed, end)
		}
		return nil
	})
	if got := fmt.Sprint(objectIDs(e.receivedOn("/t"))); got != "map[1:1 2:1 3:1 101:1 102:1 103:1]" {
		t.Fatalf("delivered %s", got)
	}
	if n := e.disp.Stats.DeadLettered.Load(); n != 0 {
		t.Fatalf("%d records dead-lettered, want none", n)
	}
}

// An empty value and a null value are dead-lettered as they came: empty
// stays empty, null stays null (a plain reader cannot tell them apart, so
// the dead letters are read with kafkaio's reader).
func TestEmptyAndNullValuesDeadLetteredAsSent(t *testing.T) {
	e := startEnv(t, loadtest.Always(200))
	e.hook("acc-t", "order.create", "/t")
	p := txnProducer(t, e, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, v := range [][]byte{{}, nil} {
		if err := p.ProduceSync(ctx, &kgo.Record{Key: []byte("acc-t"), Value: v, Partition: 0}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	produceObjects(t, p, 1, 1)
	e.waitReceived("/t", 1)
	r := kafkaio.NewPartitionReader(kafkaio.PartitionConfig{Brokers: []string{e.broker}, Topic: "geckohook.events.dlq", MaxWait: 50 * time.Millisecond}, 0)
	defer r.Close()
	var got []kafkaio.Record
	testenv.WaitFor(t, 20*time.Second, func() error {
		recs, err := r.Fetch(ctx)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			rec.Value = bytes.Clone(rec.Value)
			got = append(got, rec)
		}
		if len(got) < 2 {
			return fmt.Errorf("%d dead letters", len(got))
		}
		return nil
	})
	if got[0].Value == nil || len(got[0].Value) != 0 || got[1].Value != nil {
		t.Fatalf("dead letters %q (nil %v), %q (nil %v): want empty, then null", got[0].Value, got[0].Value == nil, got[1].Value, got[1].Value == nil)
	}
}
