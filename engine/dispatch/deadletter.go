package dispatch

import (
	"context"
	"errors"
	"strconv"

	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/contract"
)

// deadLetter is an event that cannot be delivered, with why.
type deadLetter struct {
	msg kafka.Message
	err *contract.DecodeError
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
		s.d.Stats.DeadLettered.Add(len(batch))
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
