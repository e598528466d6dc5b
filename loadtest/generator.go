package loadtest

// This file owns the flood generator: events of a plan written into Kafka
// (key = account) as fast as the broker takes them or at a fixed rate.

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/kafkaio"
)

// Flood is one burst of events: numbers From to From+Count-1, at Rate
// events/s (0: as fast as possible), stopping early after Duration when it
// is set.
type Flood struct {
	From, Count int
	Rate        float64
	Duration    time.Duration
	// Ahead, when set, is how far the producer is ahead of the deliveries
	// (in pairs) after producing n events; above MaxAhead it waits, so a
	// flood as fast as possible keeps geckohook busy without piling up a
	// backlog that outlasts the run.
	Ahead    func(n int) int64
	MaxAhead int64
}

// Generator writes a plan's events into Kafka, each stamped in the ledger
// just before it is handed to the writer.
type Generator struct {
	Plan   *Plan
	Ledger *Ledger
	w      *kafka.Writer
	stamp  int64 // event timestamp (seconds)
}

// NewGenerator writes to topic on brokers with geckohook's own writer
// settings (murmur2 partitioner, small batch timeout, acks from all).
func NewGenerator(brokers []string, topic string, p *Plan, l *Ledger) *Generator {
	w := kafkaio.NewWriter(brokers, topic)
	w.BatchSize = 2000
	w.BatchTimeout = time.Millisecond
	return &Generator{Plan: p, Ledger: l, w: w, stamp: time.Now().Unix()}
}

// Close flushes and closes the writer.
func (g *Generator) Close() error { return g.w.Close() }

// appendEvent appends event e's Kafka value.
func (g *Generator) appendEvent(dst []byte, e int) []byte {
	dst = append(dst, `{"account_id":"`...)
	dst = append(dst, AccountName(g.Plan.EventAccount(e))...)
	dst = append(dst, `","event":"`...)
	dst = append(dst, g.Plan.Event...)
	dst = append(dst, `","object_id":`...)
	dst = strconv.AppendInt(dst, int64(e), 10)
	dst = append(dst, `,"timestamp":`...)
	dst = strconv.AppendInt(dst, g.stamp, 10)
	return append(dst, '}')
}

// Run produces the flood and returns how many events went out; progress,
// when not nil, is called after every batch with the count so far.
func (g *Generator) Run(ctx context.Context, f Flood, progress func(produced int)) (int, error) {
	var deadline time.Time
	if f.Duration > 0 {
		deadline = time.Now().Add(f.Duration)
	}
	// As fast as possible: batches of 2,000; paced: a batch every 1 ms
	// holding the events due by then.
	const tick = time.Millisecond
	start := time.Now()
	produced := 0
	msgs := make([]kafka.Message, 0, 2000)
	buf := make([]byte, 0, 2000*128)
	for produced < f.Count {
		if ctx.Err() != nil {
			return produced, ctx.Err()
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			break
		}
		n := min(cap(msgs), f.Count-produced)
		if f.Ahead != nil && f.Ahead(f.From+produced) > f.MaxAhead {
			select {
			case <-ctx.Done():
				return produced, ctx.Err()
			case <-time.After(time.Millisecond):
			}
			continue
		}
		if f.Rate > 0 {
			due := int(f.Rate*time.Since(start).Seconds()) - produced
			if due <= 0 {
				select {
				case <-ctx.Done():
					return produced, ctx.Err()
				case <-time.After(tick):
				}
				continue
			}
			n = min(n, due)
		}
		msgs, buf = msgs[:0], buf[:0]
		now := time.Now()
		for i := 0; i < n; i++ {
			e := f.From + produced + i
			off := len(buf)
			buf = g.appendEvent(buf, e)
			acc := AccountName(g.Plan.EventAccount(e))
			// The record's time (CreateTime) is the instant the ledger
			// keeps as the event's produce time: geckohook's latency
			// runs from it.
			msgs = append(msgs, kafka.Message{Key: []byte(acc), Value: buf[off:len(buf):len(buf)], Time: now})
			g.Ledger.Produced(e, now)
		}
		if err := g.w.WriteMessages(ctx, msgs...); err != nil {
			return produced, fmt.Errorf("cannot produce events %d to %d: %w", f.From+produced, f.From+produced+n-1, err)
		}
		produced += n
		if progress != nil {
			progress(produced)
		}
	}
	return produced, nil
}
