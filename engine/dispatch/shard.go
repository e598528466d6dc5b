package dispatch

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// delivery is one (event, webhook) attempt on its way through the workers.
// Pooled: no per-delivery allocation beyond the event's shared body.
type delivery struct {
	sh     *shardRun
	offset int64
	hook   *registry.Webhook
	body   []byte // shared by every delivery of the event; never modified
	id     [contract.DeliveryIDLen]byte
	sig    [64]byte
	at     time.Time // when the failure happened (set only on failure)
	res    sender.Result
	// rec is set on a retry claimed from the shard's queue (offset unused);
	// settled marks a retry to remove from the queue (delivered, gone,
	// webhook deleted).
	rec     *shard.Record
	settled bool
}

var deliveryPool = sync.Pool{New: func() any { return new(delivery) }}

func releaseDelivery(dl *delivery) {
	*dl = delivery{}
	deliveryPool.Put(dl)
}

type deadLetter struct {
	msg kafka.Message
	err *contract.DecodeError
}

// shardRun is one partition's dispatcher while it is assigned here.
type shardRun struct {
	d         *Dispatcher
	partition int
	tracker   *shard.Tracker
	queue     *shard.Queue
	results   chan *delivery // failures, and retries done either way
	dead      chan deadLetter
	retries   *retrier
	stopped   chan struct{} // closed once the shard gave up its partition
	log       zerolog.Logger
	failLog   zerolog.Logger // sampled: a failing endpoint must not flood the log
}

func (d *Dispatcher) runShard(gctx context.Context, gen *kafka.Generation, a kafka.PartitionAssignment) {
	s := &shardRun{
		d:         d,
		partition: a.ID,
		tracker:   shard.NewTracker(a.Offset),
		queue:     shard.NewQueue(d.o.Redis, d.o.RedisPrefix, d.o.Topic, a.ID),
		results:   make(chan *delivery, d.o.Window),
		retries:   newRetrier(d.o.RetryWindow),
		dead:      make(chan deadLetter, 64),
		stopped:   make(chan struct{}),
		log:       d.o.Log.With().Str("topic", d.o.Topic).Int("partition", a.ID).Logger(),
	}
	s.failLog = s.log.Sample(&zerolog.BurstSampler{Burst: 5, Period: time.Second})
	s.log.Info().Int64("offset", a.Offset).Msg("shard started")
	d.Stats.Shards.Add(1)
	defer d.Stats.Shards.Add(-1)

	// The sinks outlive the generation's context: a revoked shard still
	// finishes writing what it holds before it commits.
	sinkCtx, stopSinks := context.WithCancel(context.Background())
	var sinks sync.WaitGroup
	sinks.Add(2)
	go func() { defer sinks.Done(); s.scheduleLoop(sinkCtx) }()
	go func() { defer sinks.Done(); s.deadLetterLoop(sinkCtx) }()
	// The committer keeps going through the drain, so what finishes there is
	// committed while the generation is still ours.
	stopCommits, committerDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(committerDone); s.commitLoop(stopCommits, gen) }()

	reader := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        d.o.Brokers,
		Topic:          d.o.Topic,
		Partition:      a.ID,
		MinBytes:       1,
		MaxBytes:       8 << 20,
		MaxWait:        100 * time.Millisecond,
		QueueCapacity:  1024,
		ReadBackoffMin: 10 * time.Millisecond,
		ReadBackoffMax: 250 * time.Millisecond,
		ErrorLogger:    kafka.LoggerFunc(func(f string, args ...any) { s.log.Warn().Msgf(f, args...) }),
	})
	if err := reader.SetOffset(a.Offset); err != nil {
		s.log.Error().Err(err).Msg("cannot seek partition reader")
	}
	pollerDone := make(chan struct{})
	go func() { defer close(pollerDone); s.pollLoop(gctx) }()
	for {
		if err := s.tracker.WaitBelow(gctx, d.o.Window); err != nil {
			break
		}
		m, err := reader.FetchMessage(gctx)
		if err != nil {
			if gctx.Err() != nil {
				break
			}
			s.log.Warn().Err(err).Msg("cannot fetch from partition; retrying")
			select {
			case <-gctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		s.handle(gctx, m)
	}
	if err := reader.Close(); err != nil {
		s.log.Warn().Err(err).Msg("closing partition reader")
	}

	<-pollerDone

	// Drain: let in-flight deliveries finish (or be scheduled), then commit.
	drainCtx, cancel := context.WithTimeout(context.Background(), d.o.DrainTimeout)
	err := s.tracker.WaitBelow(drainCtx, 1)
	if err != nil {
		s.log.Warn().Int("in_flight", s.tracker.InFlight()).Msg("drain timed out; unfinished events will be replayed by the next owner")
	}
	if err := s.retries.drain(drainCtx); err != nil {
		s.log.Warn().Int("retries_in_flight", s.retries.inFlight()).Msg("drain timed out; unfinished retries go back to the queue")
	}
	cancel()
	s.releaseClaims()
	stopSinks()
	close(s.stopped)
	sinks.Wait()
	close(stopCommits)
	<-committerDone
	if off := s.tracker.Committable(); off >= 0 {
		if err := d.commit(gen, a.ID, off); err != nil {
			s.log.Warn().Err(err).Int64("offset", off).Msg("final commit failed; events after the last commit will be replayed")
		} else {
			s.log.Info().Int64("offset", off).Msg("shard stopped; offset committed")
		}
	}
}

// commitLoop commits the shard's offset whenever it moved, every CommitEvery,
// until stop is closed.
func (s *shardRun) commitLoop(stop <-chan struct{}, gen *kafka.Generation) {
	t := time.NewTicker(s.d.o.CommitEvery)
	defer t.Stop()
	last := int64(-1)
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		off := s.tracker.Committable()
		if off < 0 || off == last {
			continue
		}
		if err := s.d.commit(gen, s.partition, off); err != nil {
			s.log.Warn().Err(err).Int64("offset", off).Msg("cannot commit offset; will retry")
			continue
		}
		last = off
	}
}

// handle decodes one event and hands its deliveries to the workers.
// If ctx ends while it waits to hand work over, the event stays unfinished
// (its offset uncommitted) and the partition's next owner replays it.
func (s *shardRun) handle(ctx context.Context, m kafka.Message) {
	d := s.d
	d.Stats.Events.Add(1)
	recordTime := m.Time.Unix()
	if m.Time.IsZero() {
		recordTime = d.o.Now().Unix()
	}
	ev, err := contract.DecodeEvent(m.Value, m.Key, recordTime, d.o.Catalog)
	if err != nil {
		var de *contract.DecodeError
		if !errors.As(err, &de) {
			de = &contract.DecodeError{Reason: "invalid_json", Detail: err.Error()}
		}
		s.tracker.Add(m.Offset, 1)
		select {
		case s.dead <- deadLetter{msg: m, err: de}:
		case <-ctx.Done():
		}
		return
	}
	hooks := d.o.Registry.Match(ev.AccountID, ev.Event)
	if len(hooks) == 0 {
		s.tracker.Add(m.Offset, 0)
		return
	}
	body := contract.AppendBody(make([]byte, 0, 160+len(ev.ResourceURL)), &ev, d.o.ResourceBase, d.o.Catalog)
	s.tracker.Add(m.Offset, len(hooks))
	for _, h := range hooks {
		dl := deliveryPool.Get().(*delivery)
		dl.sh, dl.offset, dl.hook, dl.body = s, m.Offset, h, body
		contract.AppendDeliveryID(dl.id[:0], d.o.Topic, int32(s.partition), m.Offset, h.ID)
		select {
		case d.work <- dl:
		case <-ctx.Done():
			releaseDelivery(dl)
			return
		}
	}
}

// deliver runs on a worker: it passes the delivery through its host's gate,
// makes the attempt, and then sends whatever the gate hands over next for
// that host, so a queued delivery never holds a worker while it waits.
func (d *Dispatcher) deliver(dl *delivery) {
	admitted := false
	for dl != nil {
		host := dl.hook.Host()
		if !admitted {
			a, shed := d.hosts.admit(host, dl)
			for _, o := range shed {
				d.overflow(o)
			}
			switch a {
			case admitQueued:
				return
			case admitOverflow:
				d.overflow(dl)
				return
			}
		}
		healthy := d.attempt(dl) // dl is released or handed on after this
		var overflow []*delivery
		dl, overflow = d.hosts.done(host, healthy)
		for _, o := range overflow {
			d.overflow(o)
		}
		admitted = true
	}
}

func refusedTarget(err error) bool {
	var ae *sender.AttemptError
	return errors.As(err, &ae) && ae.Stage == sender.StageRefusedTarget
}

// errHostSaturated marks a delivery deferred without an attempt.
var errHostSaturated = errors.New("host_saturated: host is not keeping up; deferred to the retry queue without an attempt")

// overflow fails a delivery its host cannot take now, without an attempt.
func (d *Dispatcher) overflow(dl *delivery) {
	d.Stats.Failed.Add(1)
	dl.at = d.o.Now()
	dl.res = sender.Result{Outcome: contract.Failure, Err: errHostSaturated}
	dl.sh.fail(dl)
}

// attempt makes one attempt and acts on its outcome. It reports whether the
// host looked healthy: it answered, and not too slowly.
func (d *Dispatcher) attempt(dl *delivery) (healthy bool) {
	s := dl.sh
	select {
	case <-s.stopped:
		// The shard gave its partition up without this delivery finished;
		// the next owner replays the event (or re-claims the retry).
		// Sending now would only add a duplicate and hold up shutdown.
		s.drop(dl)
		return true
	default:
	}
	hook, app := d.o.Registry.Target(dl.hook.ID)
	if hook == nil {
		// Deleted since the event was matched: nothing to deliver.
		d.Stats.Dropped.Add(1)
		s.settle(dl)
		return true
	}
	sig := app.Signer().AppendSignature(dl.sig[:0], dl.body)
	start := time.Now()
	dl.res = d.o.Sender.Send(hook.Address, dl.body, dl.id[:], sig)
	healthy = dl.res.Err == nil && time.Since(start) < d.o.SlowAttempt
	if dl.res.Outcome != contract.Success {
		dl.at = d.o.Now()
	}
	if dl.res.Err != nil && refusedTarget(dl.res.Err) {
		healthy = true // our policy, not the host's health
	}
	switch dl.res.Outcome {
	case contract.Success:
		d.Stats.Delivered.Add(1)
		d.publish(outcomes.Success, dl, time.Time{})
		s.settle(dl)
	case contract.Gone:
		// Concurrent 410s of one webhook delete it once: only the attempt
		// whose delete removed it reports the deletion.
		err := registry.ErrNotFound
		if d.o.Registry.Webhook(hook.ID) != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = d.o.Registry.DeleteWebhook(ctx, hook.ID)
			cancel()
		}
		if err != nil && !errors.Is(err, registry.ErrNotFound) {
			// Keep the delivery: its retry will meet the 410 again.
			s.log.Error().Err(err).Str("webhook_id", hook.ID).Msg("cannot delete webhook after 410 Gone; scheduling a retry")
			s.fail(dl)
			return healthy
		}
		d.Stats.Gone.Add(1)
		if err == nil {
			d.publish(outcomes.Gone, dl, dl.at)
			s.log.Info().Str("webhook_id", hook.ID).Str("app_id", hook.AppID).Msg("webhook deleted: endpoint answered 410 Gone")
		}
		s.settle(dl)
	default:
		d.Stats.Failed.Add(1)
		s.failLog.Info().Str("webhook_id", hook.ID).Int("status", dl.res.Status).Str("error", dl.res.ErrorText()).
			Str("delivery", string(dl.id[:])).Msg("delivery failed; scheduling retry")
		d.publish(outcomes.Failure, dl, dl.at)
		s.fail(dl)
	}
	return healthy
}

// publish reports an attempt's outcome to the coordinator; at zero means
// now, read only if the outcome is sent (a healthy success reads no clock).
func (d *Dispatcher) publish(kind outcomes.Kind, dl *delivery, at time.Time) {
	if d.o.Outcomes == nil {
		return
	}
	o := outcomes.Outcome{Kind: kind, WebhookID: dl.hook.ID, AppID: dl.hook.AppID, AccountID: dl.hook.AccountID,
		Event: dl.hook.Event, Address: dl.hook.Address, Status: dl.res.Status, Attempt: 1, At: at}
	if dl.rec != nil {
		o.Attempt = dl.rec.Attempts + 1 // a retry's success is always forwarded
	}
	if kind != outcomes.Success {
		o.DeliveryID, o.Error = string(dl.id[:]), dl.res.ErrorText()
	}
	d.o.Outcomes.Publish(&o)
}

// finish marks a delivery done once nothing more needs writing for it.
func (s *shardRun) finish(dl *delivery) {
	if dl.rec != nil {
		s.retries.done(dl.rec.ID)
	} else {
		s.tracker.Done(dl.offset)
	}
	releaseDelivery(dl)
}

// settle ends a delivery that needs no retry: a first attempt is done at
// once, a retry once its record is removed from the queue.
func (s *shardRun) settle(dl *delivery) {
	if dl.rec == nil {
		s.finish(dl)
		return
	}
	dl.settled = true
	s.fail(dl)
}

// fail hands a delivery to the shard's queue writer.
func (s *shardRun) fail(dl *delivery) {
	select {
	case s.results <- dl:
	case <-s.stopped:
		// The shard is gone and its offset not committed past this event:
		// the partition's next owner replays it (a retry's lease ends and
		// the next owner claims it).
		s.drop(dl)
	}
}

// drop forgets a delivery of a stopped shard without writing anything.
func (s *shardRun) drop(dl *delivery) {
	if dl.rec != nil {
		s.retries.done(dl.rec.ID)
	}
	releaseDelivery(dl)
}

const maxBatch = 512

// nextBatch waits for one item on ch, then takes whatever else is already
// there, up to cap(batch). It reports false once ctx ends.
func nextBatch[T any](ctx context.Context, ch <-chan T, batch []T) ([]T, bool) {
	batch = batch[:0]
	select {
	case <-ctx.Done():
		return batch, false
	case x := <-ch:
		batch = append(batch, x)
	}
	for len(batch) < cap(batch) {
		select {
		case x := <-ch:
			batch = append(batch, x)
		default:
			return batch, true
		}
	}
	return batch, true
}

// scheduleLoop writes failed deliveries to the shard's retry queue, and the
// outcome of every retry, in pipelined batches; a delivery counts as
// finished only once Redis has it. While Redis is away it retries with
// backoff and the windows fill up, which stops fetching and claiming:
// nothing is dropped.
func (s *shardRun) scheduleLoop(ctx context.Context) {
	batch := make([]*delivery, 0, maxBatch)
	entries := make([]shard.Entry, 0, maxBatch)
	ops := make([]shard.Op, 0, maxBatch)
	// The management API finds deliveries through the set of shards.
	if !s.retry(ctx, "register the shard", func() error { return s.d.store.Register(ctx, s.d.o.Topic, s.partition) }) {
		return
	}
	for {
		var ok bool
		if batch, ok = nextBatch(ctx, s.results, batch); !ok {
			return
		}
		entries, ops = entries[:0], ops[:0]
		soonest := time.Time{}
		for _, dl := range batch {
			if dl.rec == nil {
				entries = append(entries, s.entry(dl))
				continue
			}
			op := s.op(dl)
			if op.Kind == shard.OpReschedule && (soonest.IsZero() || op.At.Before(soonest)) {
				soonest = op.At
			}
			ops = append(ops, op)
		}
		if !s.retry(ctx, "schedule retries", func() error { return s.queue.Schedule(ctx, entries) }) {
			return
		}
		if !s.retry(ctx, "update retries", func() error { return s.queue.Apply(ctx, ops) }) {
			return
		}
		died := false
		for _, e := range entries {
			if e.Dead {
				s.d.Stats.Dead.Add(1)
				died = true
			} else {
				s.d.Stats.Scheduled.Add(1)
			}
		}
		for _, op := range ops {
			switch op.Kind {
			case shard.OpReschedule:
				s.d.Stats.Scheduled.Add(1)
			case shard.OpKill:
				s.d.Stats.Dead.Add(1)
				died = true
			}
		}
		if died {
			s.trimDead(ctx)
		}
		if !soonest.IsZero() {
			s.retries.wakeBy(soonest)
		}
		for _, dl := range batch {
			s.finish(dl)
		}
	}
}

func attempts(dl *delivery) int {
	if errors.Is(dl.res.Err, errHostSaturated) {
		return 0
	}
	return 1
}

func (s *shardRun) entry(dl *delivery) shard.Entry {
	o := &s.d.o
	rec := &shard.Record{
		ID: string(dl.id[:]), WebhookID: dl.hook.ID, AppID: dl.hook.AppID,
		AccountID: dl.hook.AccountID, Event: dl.hook.Event, Body: dl.body,
		Attempts: attempts(dl), FirstAttempt: dl.at, LastAttempt: dl.at,
		LastStatus: dl.res.Status, LastError: dl.res.ErrorText(),
		Topic: o.Topic, Partition: int32(s.partition), Offset: dl.offset,
	}
	if rec.Attempts == 0 {
		rec.Deferrals = 1 // the first, deferred: see Record.Deferrals
	}
	due, err := contract.NextAttempt(dl.at, 0, max(o.MaxRetries, 0), o.Rand)
	if err != nil {
		s.d.publish(outcomes.Dead, dl, dl.at)
		return shard.Entry{Rec: rec, Due: dl.at, Dead: true}
	}
	return shard.Entry{Rec: rec, Due: due}
}

// deadLetterLoop writes undecodable events to the dead-letter topic, with
// headers saying why and where they came from.
func (s *shardRun) deadLetterLoop(ctx context.Context) {
	batch := make([]deadLetter, 0, 64)
	msgs := make([]kafka.Message, 0, 64)
	for {
		var ok bool
		if batch, ok = nextBatch(ctx, s.dead, batch); !ok {
			return
		}
		msgs = msgs[:0]
		for _, b := range batch {
			detail := b.err.Detail
			if len(detail) > 512 {
				detail = detail[:512]
			}
			msgs = append(msgs, kafka.Message{
				Key: b.msg.Key, Value: b.msg.Value,
				Headers: []kafka.Header{
					{Key: "geckohook-error", Value: []byte(b.err.Reason)},
					{Key: "geckohook-error-detail", Value: []byte(detail)},
					{Key: "geckohook-source-topic", Value: []byte(b.msg.Topic)},
					{Key: "geckohook-source-partition", Value: []byte(strconv.Itoa(b.msg.Partition))},
					{Key: "geckohook-source-offset", Value: []byte(strconv.FormatInt(b.msg.Offset, 10))},
				},
			})
			// Keep a recognisable head of a huge value: a dead letter the
			// broker refuses would hold the partition's offset forever.
			truncate(&msgs[len(msgs)-1], maxDeadLetterValue)
			s.log.Warn().Int64("offset", b.msg.Offset).Str("reason", b.err.Reason).Str("detail", detail).Msg("event dead-lettered")
		}
		write := func() error {
			err := s.d.dlq.WriteMessages(ctx, msgs...)
			if tooLarge(err) {
				// The broker's limit is below ours: keep only a short head.
				for i := range msgs {
					truncate(&msgs[i], 1024)
				}
			}
			return err
		}
		if !s.retry(ctx, "write to the dead-letter topic", write) {
			return
		}
		s.d.Stats.DeadLettered.Add(int64(len(batch)))
		for _, b := range batch {
			s.tracker.Done(b.msg.Offset)
		}
	}
}

// maxDeadLetterValue bounds the value copied into a dead letter.
const maxDeadLetterValue = 64 << 10

// truncate cuts m's value to n bytes, saying so in a header (once: the size
// it records is the original's).
func truncate(m *kafka.Message, n int) {
	if len(m.Value) <= n {
		return
	}
	for _, h := range m.Headers {
		if h.Key == "geckohook-truncated-from" {
			m.Value = m.Value[:n]
			return
		}
	}
	m.Headers = append(m.Headers, kafka.Header{Key: "geckohook-truncated-from", Value: []byte(strconv.Itoa(len(m.Value)))})
	m.Value = m.Value[:n]
}

func tooLarge(err error) bool {
	if errors.Is(err, kafka.MessageSizeTooLarge) {
		return true
	}
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) {
		for _, e := range werrs {
			if errors.Is(e, kafka.MessageSizeTooLarge) {
				return true
			}
		}
	}
	return false
}

// retry runs op until it succeeds (true) or ctx ends (false), backing off.
func (s *shardRun) retry(ctx context.Context, what string, op func() error) bool {
	return backoff.Hold(ctx, s.log, 50*time.Millisecond, what, op)
}
