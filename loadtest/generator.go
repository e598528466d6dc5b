package loadtest

// This file owns the flood generator: events of a plan written into Kafka
// (key = account) as fast as the broker takes them or at a fixed rate.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"

	"github.com/geckohook/geckohook/engine/backoff"
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
// just before it is handed to the broker.
type Generator struct {
	Plan   *Plan
	Ledger *Ledger
	topic  string
	addr   net.Addr
	tr     *kafka.Transport
	// balancer places a key as geckohook's own writer does
	// (kafkaio.NewWriter: murmur2, as Java clients).
	balancer   kafka.Murmur2Balancer
	partitions []int // the topic's, looked up by the first batch
	stamp      int64 // event timestamp (seconds)
	retried    atomic.Int64
}

// Produce settings: tries of a batch (as kafkaio.NewWriter's MaxAttempts),
// and how long the broker may take to have it acknowledged by all.
const (
	produceTries   = 5
	produceTimeout = 10 * time.Second
)

// NewGenerator writes to topic on brokers, acknowledged by all replicas.
// Each batch goes out as one produce request, a record set per partition,
// as soon as it is made: no batch timer (a kafka.Writer waits
// BatchTimeout per partition, and answers a synchronous write only when
// every partition's batch is done, which added milliseconds to every
// paced event and about three times the CPU per event).
func NewGenerator(brokers []string, topic string, p *Plan, l *Ledger) *Generator {
	return &Generator{Plan: p, Ledger: l, topic: topic, addr: kafka.TCP(brokers...), tr: &kafka.Transport{},
		stamp: time.Now().Unix()}
}

// Close closes the generator's connections.
func (g *Generator) Close() error {
	g.tr.CloseIdleConnections()
	return nil
}

// Retried is how many produce requests failed and were sent again: their
// events' latency includes the wait.
func (g *Generator) Retried() int64 { return g.retried.Load() }

// produce writes msgs and waits until every partition has them, retrying
// the partitions that failed.
func (g *Generator) produce(ctx context.Context, msgs []kafka.Message) error {
	if g.partitions == nil {
		if err := backoff.Tries(ctx, produceTries, 100*time.Millisecond, time.Second, func() error { return g.lookUp(ctx) }, nil); err != nil {
			return err
		}
	}
	pending := make(map[int32][]int32, len(g.partitions))
	for i := range msgs {
		p := int32(g.balancer.Balance(msgs[i], g.partitions...))
		pending[p] = append(pending[p], int32(i))
	}
	return backoff.Tries(ctx, produceTries, 100*time.Millisecond, time.Second, func() error { return g.send(ctx, msgs, pending) },
		func(error, time.Duration) { g.retried.Add(1) })
}

// send sends the pending messages in one request and drops from pending
// every partition that took them.
func (g *Generator) send(ctx context.Context, msgs []kafka.Message, pending map[int32][]int32) error {
	req := &produceapi.Request{Acks: int16(kafka.RequireAll), Timeout: int32(produceTimeout / time.Millisecond),
		Topics: []produceapi.RequestTopic{{Topic: g.topic, Partitions: make([]produceapi.RequestPartition, 0, len(pending))}}}
	for p, idx := range pending {
		recs := make([]kafka.Record, len(idx))
		for j, i := range idx {
			m := &msgs[i]
			recs[j] = kafka.Record{Time: m.Time, Key: kafka.NewBytes(m.Key), Value: kafka.NewBytes(m.Value)}
		}
		req.Topics[0].Partitions = append(req.Topics[0].Partitions, produceapi.RequestPartition{
			Partition: p, RecordSet: protocol.RecordSet{Records: kafka.NewRecordReader(recs...)}})
	}
	ctx, cancel := context.WithTimeout(ctx, produceTimeout+5*time.Second)
	defer cancel()
	res, err := g.tr.RoundTrip(ctx, g.addr, req)
	if err != nil {
		return fmt.Errorf("cannot produce to %s: %w", g.topic, err)
	}
	var errs []error
	for _, t := range res.(*produceapi.Response).Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode != 0 {
				errs = append(errs, fmt.Errorf("cannot produce to %s/%d: %w", g.topic, p.Partition, kafka.Error(p.ErrorCode)))
				continue
			}
			delete(pending, p.Partition)
		}
	}
	if len(pending) > 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("cannot produce to %s: %d partitions not in the broker's answer", g.topic, len(pending)))
	}
	return errors.Join(errs...)
}

// lookUp reads how many partitions the topic has.
func (g *Generator) lookUp(ctx context.Context) error {
	c := &kafka.Client{Addr: g.addr, Transport: g.tr, Timeout: 10 * time.Second}
	res, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{g.topic}})
	if err != nil {
		return fmt.Errorf("cannot read the partitions of %s: %w", g.topic, err)
	}
	for _, t := range res.Topics {
		if t.Name != g.topic {
			continue
		}
		if t.Error != nil || len(t.Partitions) == 0 {
			return fmt.Errorf("cannot read the partitions of %s: %d partitions, %v", g.topic, len(t.Partitions), t.Error)
		}
		g.partitions = make([]int, len(t.Partitions))
		for i := range g.partitions {
			g.partitions[i] = i
		}
		return nil
	}
	return fmt.Errorf("cannot read the partitions of %s: not in the broker's answer", g.topic)
}

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
		if err := g.produce(ctx, msgs); err != nil {
			return produced, fmt.Errorf("cannot produce events %d to %d: %w", f.From+produced, f.From+produced+n-1, err)
		}
		produced += n
		if progress != nil {
			progress(produced)
		}
	}
	return produced, nil
}
