package coordinator

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/outcomes"
)

// The lag check shows the group's lag per outcomes partition, 0 included,
// and whether it is caught up.
func TestLagMetrics(t *testing.T) {
	c, _, w := setup(t)
	ctx := context.Background()
	brokers := outcomesBroker(t, 2)
	set := metrics.NewSet()
	c2 := New(Options{Brokers: brokers, Redis: c.o.Redis, Registry: c.o.Registry, Metrics: set,
		Now: func() time.Time { return t0 }, Log: zerolog.New(zerolog.NewTestWriter(t))})
	page := func() string {
		var b bytes.Buffer
		set.WritePrometheus(&b)
		return b.String()
	}
	mustShow := func(lines ...string) {
		t.Helper()
		p := page()
		for _, l := range lines {
			if !strings.Contains(p, l+"\n") {
				t.Fatalf("metrics lack %s:\n%s", l, p)
			}
		}
	}
	if _, err := c2.CheckLag(ctx); err != nil {
		t.Fatal(err)
	}
	mustShow(`geckohook_consumer_lag{topic="geckohook.outcomes",partition="0"} 0`,
		`geckohook_consumer_lag{topic="geckohook.outcomes",partition="1"} 0`, "geckohook_coordinator_caught_up 1")
	conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], outcomes.DefaultTopic, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteMessages(msg(t, w, outcomes.Failure, t0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close()
	if _, err := c2.CheckLag(ctx); err != nil {
		t.Fatal(err)
	}
	mustShow(`geckohook_consumer_lag{topic="geckohook.outcomes",partition="1"} 1`, "geckohook_coordinator_caught_up 0")
	// A failed check shows no lag rather than an old one.
	c2.showLag(nil)
	if strings.Contains(page(), "geckohook_consumer_lag") {
		t.Fatalf("lag shown after a failed check:\n%s", page())
	}
}
