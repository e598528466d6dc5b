package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/dispatch"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
)

const (
	floodPartitions = 8
	floodReceivers  = 8
	floodWebhooks   = 1000
	floodWorkers    = 256
)

// startFarm starts the endpoints both benchmarks send to: the load-test
// farm on floodReceivers servers, playing floodWebhooks webhooks (webhook i
// of account acc-i, on server i%floodReceivers) that answer 200 at once and
// record each request in the ledger in use. They know no secret, so they
// skip checking signatures: the cheapest endpoint, so the measurement is of
// the sender side.
func startFarm(b *testing.B) (*loadtest.Farm, *loadtest.Plan) {
	b.Helper()
	p := &loadtest.Plan{Event: "order.create", Apps: []loadtest.PlanApp{{Name: "bench"}}}
	for i := 0; i < floodWebhooks; i++ {
		p.AddAccount(0, []int{i % floodReceivers}, []loadtest.EndpointBehaviour{{}})
	}
	f, err := loadtest.NewFarm(floodReceivers)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = f.Close() })
	f.Add(p)
	return f, p
}

// BenchmarkRawCeiling is the most POSTs/s this machine does into the same
// endpoints with the same bodies, headers and concurrency, without Kafka or
// Redis: the ceiling BenchmarkFlood is compared with. It is one run of the
// capacity harness's ceiling at 256 concurrent requests.
func BenchmarkRawCeiling(b *testing.B) {
	f, p := startFarm(b)
	b.ResetTimer()
	c, err := loadtest.RunCeilingAt(context.Background(), f, p, loadtest.CeilingOptions{
		Events: b.N, Workers: floodWorkers, MaxConnsPerHost: 64,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(c.PerSec, "deliveries/s")
}

// BenchmarkFlood measures the whole delivery path in one process: events
// already in the embedded Kafka (8 partitions), 1,000 webhooks in the
// registry (one per account, spread over 8 receivers), a real redis-server,
// and the dispatcher consuming, signing and POSTing until every delivery
// was answered. Setup and producing are not timed.
func BenchmarkFlood(b *testing.B) {
	srv := testenv.Redis(b)
	k := testenv.Kafka(b, floodPartitions)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	brokers := []string{k.Addr()}
	if err := kafkaio.EnsureTopics(ctx, brokers, kafkaio.Topic{Name: "geckohook.events", Partitions: floodPartitions},
		kafkaio.Topic{Name: "geckohook.events.dlq", Partitions: 1}); err != nil {
		b.Fatal(err)
	}
	rdb := srv.Client()
	farm, p := startFarm(b)
	reg := seededRegistry(b, rdb, floodWebhooks, func(i int) registry.Webhook {
		return registry.Webhook{AccountID: loadtest.AccountName(i), Event: p.Event, Address: p.Hooks[i].URL}
	})
	w := kafkaio.NewWriter(brokers, "geckohook.events")
	w.BatchSize = 5000
	msgs := make([]kafka.Message, 0, 5000)
	for i := 0; i < b.N; i++ {
		acc := loadtest.AccountName(i % floodWebhooks)
		msgs = append(msgs, kafka.Message{Key: []byte(acc), Value: fmt.Appendf(nil, `{"account_id":%q,"event":"order.create","object_id":%d,"timestamp":1700000000}`, acc, i)})
		if len(msgs) == cap(msgs) || i == b.N-1 {
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				b.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	_ = w.Close()
	// Event i is account i%floodWebhooks's, as in the plan: the farm records
	// the flood in a ledger, as it does the ceiling's requests.
	l := loadtest.NewLedger(p, b.N)
	for i := 0; i < b.N; i++ {
		l.Produced(i, time.Now())
	}
	farm.Use(l)

	d := dispatch.New(dispatch.Options{
		Brokers: brokers, Registry: reg, Redis: rdb, Workers: floodWorkers, MaxRetries: contract.DefaultMaxRetries,
		Sender: sender.New(sender.Options{Policy: netguard.Policy{AllowPrivate: true, AllowHTTP: true}}),
		Log:    zerolog.Nop(),
	})
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	done := make(chan error, 1)
	dctx, stop := context.WithCancel(ctx)
	go func() { done <- d.Run(dctx) }()
	deadline := time.Now().Add(5 * time.Minute)
	for farm.Requests() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d delivered in 5 minutes", farm.Requests(), b.N)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	stop()
	<-done
	if f := d.Stats.Failed.Load(); f != 0 {
		b.Fatalf("%d deliveries failed", f)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "deliveries/s")
}
