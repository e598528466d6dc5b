// Package backoff owns geckohook's one way of waiting out a dependency
// that is away (Redis down or loading, a Kafka broker unreachable): try the
// operation again after waits that double from a first to a largest, until
// it works or the context ends. Its Sleep is the one wait that a context
// cuts short.
package backoff

import (
	"context"
	"time"

	"github.com/rs/zerolog"
)

// Retry runs op until it returns nil (true) or ctx ends (false). After each
// failure it calls failed, when set, with the error and the wait before the
// next try; waits double from first up to limit.
func Retry(ctx context.Context, first, limit time.Duration, op func() error, failed func(err error, wait time.Duration)) bool {
	return Tries(ctx, 0, first, limit, op, failed) == nil
}

// Tries is Retry bounded to n tries (n <= 0: no bound). It returns nil once
// op works, ctx's error when ctx ends, or op's last error after n failures
// (no wait follows the last one, and failed is not called for it).
func Tries(ctx context.Context, n int, first, limit time.Duration, op func() error, failed func(err error, wait time.Duration)) error {
	t := time.NewTimer(0)
	<-t.C
	defer t.Stop()
	w := NewWaits(first, limit)
	for try := 1; ; try++ {
		err := op()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if n > 0 && try >= n {
			return err
		}
		wait := w.Next()
		if failed != nil {
			failed(err, wait)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Hold is Retry for a loop whose progress waits on op (a Redis write, a
// Kafka commit): waits double from first up to 5 s, and each failure is
// logged as "cannot <what>; offsets held until it works".
func Hold(ctx context.Context, log zerolog.Logger, first time.Duration, what string, op func() error) bool {
	return Retry(ctx, first, HoldLimit, op, func(err error, wait time.Duration) {
		log.Warn().Err(err).Dur("retry_in_ms", wait).Msgf("cannot %s; offsets held until it works", what)
	})
}

// HoldLimit is the largest wait of Hold.
const HoldLimit = 5 * time.Second

// Waits is the sequence of waits Retry sleeps, for a loop that cannot block
// in Retry (it keeps working while one step waits for its next try): each
// Next doubles from first up to limit, Reset starts again at first. The
// zero Waits is not usable; make one with NewWaits.
type Waits struct {
	first, limit, next time.Duration
}

// NewWaits returns waits doubling from first up to limit.
func NewWaits(first, limit time.Duration) Waits {
	return Waits{first: first, limit: limit, next: first}
}

// Next returns the wait before the next try and doubles the one after.
func (w *Waits) Next() time.Duration {
	d := w.next
	w.next = min(2*w.next, w.limit)
	return d
}

// Reset makes the next wait the first one again (after a success).
func (w *Waits) Reset() { w.next = w.first }

// Sleep waits for d or until ctx ends, and reports whether it waited the
// whole d.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
