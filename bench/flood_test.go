package bench

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/dispatch"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/internal/testenv"
)

const (
	floodPartitions = 8
	floodReceivers  = 8
	floodWebhooks   = 1000
	floodWorkers    = 256
)

// receivers are fasthttp servers on loopback that count requests and answer
// 200: the cheapest endpoint, so the measurement is of the sender side.
type receivers struct {
	urls  []string
	count atomic.Int64
	srvs  []*fasthttp.Server
}

func startReceivers(b *testing.B) *receivers {
	r := &receivers{}
	for i := 0; i < floodReceivers; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { r.count.Add(1) }, ReadTimeout: 30 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		r.srvs = append(r.srvs, srv)
		r.urls = append(r.urls, "http://"+ln.Addr().String())
	}
	b.Cleanup(func() {
		for _, s := range r.srvs {
			_ = s.Shutdown()
		}
	})
	return r
}

// BenchmarkRawCeiling is the most POSTs/s this machine does into the same
// receivers with the same body, headers and concurrency, without Kafka or
// Redis: the ceiling BenchmarkFlood is compared with.
func BenchmarkRawCeiling(b *testing.B) {
	r := startReceivers(b)
	c := &fasthttp.Client{MaxConnsPerHost: 64, MaxConnWaitTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	body := []byte(`{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json"}`)
	sig := []byte("AK5Ou/IZRsZIjJ37NlPFWIMXcTZa/Ph+MeF6V4HonE8=")
	id := []byte("d4903db7-e66c-8bf7-b732-5361be698465")
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < floodWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				req.Reset()
				req.SetRequestURI(r.urls[int(i)%len(r.urls)] + "/hook")
				req.Header.SetMethod("POST")
				req.Header.SetContentType("application/json")
				req.Header.SetBytesV("X-Gecko-Delivery", id)
				req.Header.SetBytesV("X-Gecko-Signature", sig)
				req.SetBodyRaw(body)
				if err := c.DoTimeout(req, resp, 10*time.Second); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "deliveries/s")
}

// BenchmarkFlood measures the whole delivery path in one process: events
// already in the embedded Kafka (8 partitions), 1,000 webhooks in the
// registry (one per account, spread over 8 receivers), a real redis-server,
// and the dispatcher consuming, signing and POSTing until every delivery
// was answered. Setup and producing are not timed.
func BenchmarkFlood(b *testing.B) {
	r := startReceivers(b)
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
	reg := seededRegistry(b, rdb, floodWebhooks, func(i int) registry.Webhook {
		return registry.Webhook{AccountID: "acc-" + strconv.Itoa(i), Event: "order.create", Address: r.urls[i%len(r.urls)] + "/hook/" + strconv.Itoa(i)}
	})
	w := kafkaio.NewWriter(brokers, "geckohook.events")
	w.BatchSize = 5000
	msgs := make([]kafka.Message, 0, 5000)
	for i := 0; i < b.N; i++ {
		acc := "acc-" + strconv.Itoa(i%floodWebhooks)
		msgs = append(msgs, kafka.Message{Key: []byte(acc), Value: fmt.Appendf(nil, `{"account_id":%q,"event":"order.create","object_id":%d,"timestamp":1700000000}`, acc, i)})
		if len(msgs) == cap(msgs) || i == b.N-1 {
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				b.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	_ = w.Close()

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
	for r.count.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d delivered in 5 minutes", r.count.Load(), b.N)
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
