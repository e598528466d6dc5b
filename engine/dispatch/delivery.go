package dispatch

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/retry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// delivery is one (event, webhook) delivery on its turn through the
// workers: a first attempt straight from Kafka, or a retry claimed from the
// shard's queue. Pooled, like the event's shared body: a first attempt
// allocates nothing in steady state.
type delivery struct {
	sh     *shardRun
	gate   *hostState // its host's entry in the gate, once admitted or queued
	offset int64
	hook   *registry.Webhook
	// app is hook's application and version the registry's version when
	// both were matched (app nil: look them up again, as for a retry).
	app     *registry.App
	version uint64
	body    []byte // shared by every delivery of the event; never modified
	// shared holds body for a first attempt: the event's deliveries share
	// it, and the last one released gives it back for another event.
	shared *eventBody
	id     [contract.DeliveryIDLen]byte
	// produced is the event's Kafka record time (unix ns; 0: unknown or a
	// retry), for the produce-to-answer latency of first attempts.
	produced int64
	res      sender.Result
	// rec is the queue's record: claimed with a retry (queued), or made
	// for a first turn that must be written.
	rec *shard.Record
	// What the turn's decision left for the writer: the write, when it is
	// due (at: when the turn ended, read only on failure), the outcome to
	// publish once it is written, and whether the webhook is to be deleted.
	at, due    time.Time
	turn       int32 // this turn's attempt number (1 for a first attempt)
	write      retry.Write
	published  outcomes.Kind
	queued     bool
	deleteHook bool
}

var deliveryPool = sync.Pool{New: func() any { return new(delivery) }}

// releaseDelivery puts dl back in the pool, and the event's body too once
// dl was the last of its deliveries. Every delivery is released once, at
// the end of its turn (complete or abandon), after the request and any
// write of its record are done: nothing reads the body after that.
func releaseDelivery(dl *delivery) {
	if b := dl.shared; b != nil && b.refs.Add(-1) == 0 {
		bodyPool.Put(b)
	}
	*dl = delivery{}
	deliveryPool.Put(dl)
}

// eventBody is an event's webhook body, built once by the fan-out and
// shared by the event's deliveries. It was 42% of the bytes geckohook
// allocated in a healthy flood (an allocation profile of geckoload
// -scenario healthy -short), and those bytes set the pace of its garbage
// collections, in whose mark phases the latency tail sat.
type eventBody struct {
	b    []byte
	refs atomic.Int32 // the deliveries not yet released
}

var bodyPool = sync.Pool{New: func() any { return &eventBody{b: make([]byte, 0, 256)} }}

// state is what the retry queue knows of the delivery before this turn.
func (dl *delivery) state() retry.State {
	if !dl.queued {
		return retry.State{}
	}
	r := dl.rec
	return retry.State{Queued: true, Attempts: r.Attempts, Retries: r.Retries, Deferrals: r.Deferrals, FirstAttempt: r.FirstAttempt}
}

// conclude carries out what the retry policy decides for a turn that ended
// in r at time at (zero for a success: a healthy delivery reads no clock):
// the attempt's outcome is published, and the delivery is either complete
// or handed to the shard's writer. It reports false if ctx ended before the
// writer took it (the delivery is then abandoned).
func (s *shardRun) conclude(ctx context.Context, dl *delivery, r retry.Result, at time.Time) bool {
	if !s.decide(dl, r, at) {
		return true
	}
	return s.toWriter(ctx, dl)
}

// decide is conclude up to the writer: it publishes the attempt's outcome
// and either completes the delivery (false) or readies it for the writer
// (true).
func (s *shardRun) decide(dl *delivery, r retry.Result, at time.Time) bool {
	d := s.d
	switch r {
	case retry.Delivered:
		d.Stats.Delivered.Inc()
	case retry.Failed, retry.Saturated:
		d.Stats.Failed.Inc()
	case retry.Deleted:
		d.Stats.Dropped.Inc()
	}
	dec := d.policy.Decide(dl.state(), retry.Turn{Result: r, At: at, RetryAfter: dl.res.RetryAfter})
	dl.turn = 1
	if dl.queued {
		dl.turn = int32(dl.rec.Attempts + 1)
	}
	dl.at = at
	if dec.Publish != 0 {
		d.publish(dec.Publish, dl)
	}
	if dec.Write == retry.Nothing && !dec.DeleteWebhook {
		s.complete(dl)
		return false
	}
	if dec.Write == retry.Schedule || dec.Write == retry.Kill {
		s.note(dl, dec)
	}
	dl.write, dl.due, dl.published, dl.deleteHook = dec.Write, dec.At, dec.PublishWritten, dec.DeleteWebhook
	return true
}

// note writes the decided state into the delivery's record, making the
// record on a first turn.
func (s *shardRun) note(dl *delivery, dec retry.Decision) {
	rec := dl.rec
	if rec == nil {
		h := dl.hook
		rec = &shard.Record{
			ID: string(dl.id[:]), WebhookID: h.ID, AppID: h.AppID, AccountID: h.AccountID, Event: h.Event,
			Body: dl.body, Topic: s.d.o.Topic, Partition: int32(s.partition), Offset: dl.offset,
		}
		dl.rec = rec
	}
	st := dec.State
	rec.Attempts, rec.Retries, rec.Deferrals, rec.FirstAttempt = st.Attempts, st.Retries, st.Deferrals, st.FirstAttempt
	rec.RetryAfter = dec.RetryAfter
	if dec.Note {
		rec.LastAttempt, rec.LastStatus, rec.LastError = dl.at, dl.res.Status, dl.res.ErrorText()
	}
}

// toWriter hands a delivery to the shard's writer. If ctx ends first the
// delivery is abandoned: the shard is giving its partition up, and the
// next owner replays the event (or re-claims the retry when its lease
// ends).
func (s *shardRun) toWriter(ctx context.Context, dl *delivery) bool {
	if ctx.Err() != nil {
		// The writer may have stopped: a send that the select below
		// could still pick would never be written nor given back.
		s.abandon(dl)
		return false
	}
	select {
	case s.writes <- dl:
		return true
	case <-ctx.Done():
		s.abandon(dl)
		return false
	}
}

// complete ends a delivery whose decision is carried out: its event's
// offset (or its claim) is free to move on.
func (s *shardRun) complete(dl *delivery) {
	if dl.queued {
		s.claims.done(dl.rec.ID)
	} else {
		s.tracker.Done(dl.offset)
	}
	releaseDelivery(dl)
}

// abandon forgets a delivery of a stopping shard without writing anything;
// the partition's next owner replays it.
func (s *shardRun) abandon(dl *delivery) {
	if dl.queued {
		s.claims.done(dl.rec.ID)
	}
	releaseDelivery(dl)
}

// publish reports a turn's outcome to the coordinator. A success carries
// no time: the publisher reads its clock only if it forwards one.
func (d *Dispatcher) publish(kind outcomes.Kind, dl *delivery) {
	if d.o.Outcomes == nil {
		return
	}
	o := outcomes.Outcome{Kind: kind, WebhookID: dl.hook.ID, AppID: dl.hook.AppID, AccountID: dl.hook.AccountID,
		Event: dl.hook.Event, Address: dl.hook.Address, Status: dl.res.Status, Attempt: int(dl.turn), At: dl.at}
	if kind != outcomes.Success {
		o.DeliveryID, o.Error = string(dl.id[:]), dl.res.ErrorText()
	}
	d.o.Outcomes.Publish(&o)
}
