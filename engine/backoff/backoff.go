// Package backoff owns geckohook's one way of waiting out a dependency
// that is away (Redis down or loading, a Kafka broker unreachable): try the
// operation again after waits that double from a first to a largest, until
// it works or the context ends.
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
	t := time.NewTimer(0)
	<-t.C
	defer t.Stop()
	for wait := first; ; wait = min(2*wait, limit) {
		err := op()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if failed != nil {
			failed(err, wait)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// Hold is Retry for a loop whose progress waits on op (a Redis write, a
// Kafka commit): waits double from first up to 5 s, and each failure is
// logged as "cannot <what>; offsets held until it works".
func Hold(ctx context.Context, log zerolog.Logger, first time.Duration, what string, op func() error) bool {
	return Retry(ctx, first, 5*time.Second, op, func(err error, wait time.Duration) {
		log.Warn().Err(err).Dur("retry_in", wait).Msgf("cannot %s; offsets held until it works", what)
	})
}
