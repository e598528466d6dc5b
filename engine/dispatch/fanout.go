package dispatch

import (
	"bytes"
	"context"
	"errors"

	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/kafkaio"
)

// fanOut decodes one event and hands one delivery per matching webhook to
// the workers; an event that cannot be decoded goes to the dead-letter
// writer. The body is built once and shared; each delivery gets its id
// from the event's coordinates and the webhook, and goes through its
// host's gate (hand). If ctx ends while a dead letter waits for its writer,
// the event stays unfinished (its offset uncommitted) and the partition's
// next owner replays it.
func (s *shardRun) fanOut(ctx context.Context, m *kafkaio.Record) {
	d := s.d
	d.Stats.Events.Inc()
	recordTime, produced := m.Time.Unix(), m.Time.UnixNano()
	if m.Time.IsZero() {
		recordTime, produced = d.o.Now().Unix(), 0
	}
	ev, err := contract.DecodeEventInterned(m.Value, m.Key, recordTime, d.o.Catalog, s.intern)
	if err != nil {
		var de *contract.DecodeError
		if !errors.As(err, &de) {
			de = &contract.DecodeError{Reason: "invalid_json", Detail: err.Error()}
		}
		s.tracker.Add(m.Offset, 1)
		// The record's bytes are the reader's until its next fetch: the
		// dead letter keeps a copy, empty and null values as they were.
		msg := kafka.Message{Topic: d.o.Topic, Partition: s.partition, Offset: m.Offset,
			Key: bytes.Clone(m.Key), Value: bytes.Clone(m.Value)}
		select {
		case s.dead <- deadLetter{msg: msg, err: de}:
		case <-ctx.Done():
		}
		return
	}
	targets, version := d.o.Registry.MatchTargets(s.targets[:0], ev.AccountID, ev.Event)
	s.targets = targets
	if len(targets) == 0 {
		s.tracker.Add(m.Offset, 0)
		return
	}
	body := bodyPool.Get().(*eventBody)
	body.b = contract.AppendBody(body.b[:0], &ev, d.o.ResourceBase, d.o.Catalog)
	body.refs.Store(int32(len(targets)))
	s.tracker.Add(m.Offset, len(targets))
	for i := range targets {
		t := &targets[i]
		dl := deliveryPool.Get().(*delivery)
		dl.sh, dl.offset, dl.hook, dl.app, dl.version, dl.produced = s, m.Offset, t.Hook, t.App, version, produced
		dl.body, dl.shared = body.b, body
		contract.AppendDeliveryID(dl.id[:0], d.o.Topic, int32(s.partition), m.Offset, t.Hook.ID)
		d.hand(ctx, dl)
	}
	clear(targets) // the scratch keeps no webhook alive
}

// maxAccounts bounds a shard's account ids: past it they start over.
const maxAccounts = 4096

// account returns an account id with b's bytes: the same string for every
// event of an account the shard decoded lately, so that decoding those
// allocates nothing. The account id was the last allocation of a healthy
// delivery's fan-out once the body was pooled and Kafka records decoded in
// place (an allocation profile of geckoload -scenario healthy -short at
// GOGC=10: 3 of 12.8 MB over 6 s of flood, the rest buffers growing to
// their size). Only the fetch loop calls it.
func (s *shardRun) account(b []byte) string {
	if a, ok := s.accounts[string(b)]; ok {
		return a
	}
	if len(s.accounts) >= maxAccounts {
		clear(s.accounts)
	}
	a := string(b)
	s.accounts[a] = a
	return a
}
