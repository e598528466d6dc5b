package dispatch

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/outcomes"
)

// The dispatcher publishes failures, the first success after a failure,
// 410s and dead deliveries; the successes of a healthy webhook cost nothing.
func TestDispatcherPublishesOutcomes(t *testing.T) {
	var pub *outcomes.Publisher
	e := startEnvWith(t, func(path string, n int) int {
		switch {
		case strings.HasPrefix(path, "/gone"):
			return 410
		case strings.HasPrefix(path, "/flaky") && n == 0:
			return 503
		}
		return 200
	}, func(o *Options) {
		if err := kafkaio.EnsureTopics(context.Background(), o.Brokers, kafkaio.Topic{Name: outcomes.DefaultTopic, Partitions: 1}); err != nil {
			t.Fatal(err)
		}
		pub = outcomes.NewPublisher(o.Brokers, outcomes.DefaultTopic, zerolog.Nop())
		o.Outcomes = pub
		o.MaxRetries = -1 // every failure is dead at once
	})
	flaky := e.hook("acc1", "order.create", "/flaky")
	gone := e.hook("acc1", "order.create", "/gone")
	ok := e.hook("acc1", "order.create", "/ok")
	for i := 1; i <= 2; i++ {
		e.produce("acc1", fmt.Sprintf(`{"account_id":"acc1","event":"order.create","object_id":%d}`, i))
		e.waitReceived("/flaky", i)
		e.waitReceived("/ok", i)
	}
	e.produce("acc1", `{"account_id":"acc1","event":"order.create","object_id":3}`)
	e.waitReceived("/flaky", 3)
	e.waitReceived("/ok", 3)
	e.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.broker}, Topic: outcomes.DefaultTopic, MaxWait: 50 * time.Millisecond})
	defer r.Close()
	got := map[string][]string{}
	for i := int64(0); i < pub.Published.Load(); i++ {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		o, err := outcomes.Decode(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if o.AppID != e.app.ID || o.AccountID != "acc1" || o.Address == "" || o.At.IsZero() || o.Attempt != 1 {
			t.Fatalf("outcome lacks the webhook's details: %+v", o)
		}
		got[o.WebhookID] = append(got[o.WebhookID], o.Kind.String()+fmt.Sprint(o.Status))
	}
	want := map[string]string{
		flaky.ID: "[failure503 dead503 success200]", // then healthy: filtered
		gone.ID:  "[gone410]",
		ok.ID:    "[]",
	}
	for id, w := range want {
		if fmt.Sprint(got[id]) != w {
			t.Errorf("%s: outcomes %v, want %s", id, got[id], w)
		}
	}
	if pub.Filtered.Load() != 4 { // /ok three times, /flaky once
		t.Errorf("filtered %d successes, want 4", pub.Filtered.Load())
	}
}
