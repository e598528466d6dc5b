package dispatch

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/retry"
	"github.com/geckohook/geckohook/engine/sender"
)

// hand passes a delivery through its host's gate on the caller's goroutine
// (a shard's fetch loop or retry poller, whose context is ctx) and gives
// the workers only what may be sent now. A delivery the gate queues is
// sent later by the worker that finishes an attempt to its host, so a full
// host costs no worker wakeup per delivery. An admitted delivery holds a
// place in its host's limit, so it must reach a worker even when ctx ends
// while every worker is busy (possibly waiting for this shard's writer,
// which stops only once its feeders have returned): then a goroutine takes
// it over (Run waits for these before it closes the worker pool), and the
// worker abandons it if the shard has let the partition go by then. A
// delivery the host cannot take now goes to its shard's writer the same
// way (overflowFrom).
func (d *Dispatcher) hand(ctx context.Context, dl *delivery) {
	a, shed := d.hosts.admit(dl.hook.Host(), dl)
	for _, o := range shed {
		d.overflowFrom(ctx, o)
	}
	switch a {
	case admitQueued:
	case admitOverflow:
		d.overflowFrom(ctx, dl)
	default:
		if !d.pool.give(ctx, dl) {
			goWith(&d.handoffs, func() { d.pool.give(context.Background(), dl) })
		}
	}
}

// deliver runs on a worker: it makes the attempt of an admitted delivery,
// and then sends whatever the gate hands over next for that host.
func (d *Dispatcher) deliver(dl *delivery) {
	for dl != nil {
		gate := dl.gate
		healthy, took, answered := d.attempt(dl) // dl is released or handed on after this
		var overflow []*delivery
		dl, overflow = d.hosts.done(gate, healthy, took, answered)
		for _, o := range overflow {
			d.overflow(o)
		}
	}
}

// errHostSaturated is the error recorded for a delivery deferred without an
// attempt.
var errHostSaturated = errors.New("host_saturated: host is not keeping up; deferred to the retry queue without an attempt")

// overflow defers a delivery its host cannot take now, without an attempt,
// waiting for the writer as long as its shard lives.
func (d *Dispatcher) overflow(dl *delivery) { d.overflowFrom(dl.sh.life, dl) }

// overflowFrom is overflow on a feeder (a fetch loop or retry poller)
// whose context is ctx. A feeder must not wait for a writer past ctx: a
// shard's life, which ends that wait, ends only once its feeders have
// returned, so a writer held up by Redis would hold the partition's
// hand-back with it, past the drain timeout. A goroutine takes the wait
// over then (Run waits for these, as for hand's), and the delivery is
// written, or abandoned once its shard has let the partition go.
func (d *Dispatcher) overflowFrom(ctx context.Context, dl *delivery) {
	s := dl.sh
	dl.res = sender.Result{Outcome: contract.Failure, Err: errHostSaturated}
	if !s.decide(dl, retry.Saturated, d.o.Now()) {
		return
	}
	select {
	case s.writes <- dl:
	case <-ctx.Done():
		goWith(&d.handoffs, func() { s.toWriter(s.life, dl) })
	}
}

// attempt makes one attempt and concludes the delivery's turn. It reports
// whether the host looked healthy (it answered, and not too slowly), how
// long the request took and when it ended (0 and zero when none was sent). The worker only classifies:
// whatever must be written (a retry, a 410's deletion) goes to the shard's
// writer.
func (d *Dispatcher) attempt(dl *delivery) (healthy bool, took time.Duration, answered time.Time) {
	s := dl.sh
	if s.life.Err() != nil {
		// The shard gave its partition up without this delivery finished;
		// the next owner replays the event (or re-claims the retry).
		// Sending now would only add a duplicate and hold up shutdown.
		s.abandon(dl)
		return true, 0, time.Time{}
	}
	// The webhook as matched, when nothing in the registry changed since;
	// otherwise as it is now.
	hook, app := dl.hook, dl.app
	if app == nil || d.o.Registry.Version() != dl.version {
		hook, app = d.o.Registry.Target(dl.hook.ID)
	}
	if hook == nil {
		// Deleted since the event was matched: nothing to deliver.
		s.conclude(s.life, dl, retry.Deleted, time.Time{})
		return true, 0, time.Time{}
	}
	// The webhook as it is now: its outcome and record carry the current
	// address, not the one the event was matched with.
	dl.hook = hook
	var sig sender.Signatures
	var sigBuf [64]byte
	if app.SignsGecko() {
		sig.Gecko = app.Signer().AppendSignature(sigBuf[:0], dl.body)
	}
	start := time.Now()
	// Standard Webhooks signatures are made here, on the stack, not in the
	// delivery record; two entries (a rotation's overlap) fit without
	// allocating.
	var stdTS [20]byte
	var stdSig [2*64 + 1]byte
	if app.SignsStandard() {
		ts := start.Unix() // the attempt's own time, also on retries
		sig.Timestamp = strconv.AppendInt(stdTS[:0], ts, 10)
		sig.Standard = app.AppendStandardSignature(stdSig[:0], dl.id[:], ts, dl.body)
	}
	dl.res = d.o.Sender.SendSigned(hook.Address, dl.body, dl.id[:], sig)
	answered = time.Now()
	took = answered.Sub(start)
	d.m.observe(dl, took, answered)
	// A 429 asks for less: it lowers the host's concurrency like a timeout.
	healthy = dl.res.Err == nil && dl.res.Status != 429 && took < d.o.SlowAttempt
	if refusedTarget(dl.res.Err) {
		healthy = true // our policy, not the host's health
	}
	var at time.Time
	r := retry.ResultOf(dl.res.Outcome)
	if r != retry.Delivered {
		at = d.o.Now()
	}
	if r == retry.Failed {
		s.failLog.Info().Str("webhook_id", hook.ID).Int("status", dl.res.Status).Str("error", dl.res.ErrorText()).
			Str("delivery", string(dl.id[:])).Msg("delivery failed; scheduling retry")
	}
	s.conclude(s.life, dl, r, at)
	return healthy, took, answered
}

func refusedTarget(err error) bool {
	if err == nil {
		return false // before ae, which errors.As moves to the heap
	}
	var ae *sender.AttemptError
	return errors.As(err, &ae) && ae.Stage == sender.StageRefusedTarget
}
