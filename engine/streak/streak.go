// Package streak holds the failure-streak rules of the delivery contract as pure code:
// how one delivery outcome changes a webhook's health State, and when a
// webhook must be deleted (410 Gone at once; failures unbroken for
// DeleteAfter, 72 h by default). It does no I/O; the coordinator reads the
// state from Redis, applies outcomes here and writes back what changed.
//
// Outcomes arrive late and out of order (several dispatcher processes,
// retries, replays), so every rule is decided by the outcomes' own At
// timestamps, never by arrival order:
//
//   - A failure at t starts a streak only if t is after the last known
//     success; a failure that happened before a success we already know of
//     cannot prove the endpoint is failing now. It still counts in the
//     day's failures.
//   - A success at t resets the streak only if t is after the last failure
//     of the streak. A success between the streak's start and its last
//     failure (a retry that succeeded while a newer attempt failed) breaks
//     the run: the streak restarts at that last failure, the only one known
//     to be after the success. A success at or before the streak's start
//     changes nothing but LastSuccess.
//   - Deletion is due when a streak exists and began at least DeleteAfter
//     before a given time. When a failure arrives, that time is the
//     failure's own At, never the coordinator's clock: a lagging coordinator
//     reading a backlog must not count the hours it was behind as failing
//     time (a success later in the backlog may still reset the streak).
//     Checking against the clock (Due(s, now)) is the caller's business, and
//     only sound once every outcome up to now has been applied.
package streak

import (
	"time"

	"github.com/geckohook/geckohook/engine/outcomes"
)

// DefaultDeleteAfter is the delivery contract's 3 days.
const DefaultDeleteAfter = 72 * time.Hour

// Reasons a webhook was deleted.
const (
	ReasonGone    = "gone"    // the endpoint answered 410 Gone
	ReasonFailing = "failing" // failures unbroken for DeleteAfter
	ReasonRemoved = "removed" // due under the 3-day rule, but already removed through the API
)

// State is one webhook's health, as kept in gh:health:{webhook}.
type State struct {
	StreakStart time.Time // first failure of the current streak; zero when not failing
	LastFailure time.Time // newest failure seen
	Failures    int       // failures in the current streak
	LastStatus  int       // of the newest failure (0: no HTTP answer)
	LastError   string    // of the newest failure
	LastSuccess time.Time // newest success seen

	Day           string // the mail day FailuresToday counts (see Policy.Day)
	FailuresToday int
	DeadToday     int // deliveries that went dead during Day

	Deleted time.Time // when it was deleted; zero while it exists
	Reason  string    // why (ReasonGone, ReasonFailing)
}

// Failing reports whether a streak is running.
func (s *State) Failing() bool { return !s.StreakStart.IsZero() }

// Decision is what applying an outcome means for the webhook.
type Decision struct {
	Changed   bool   // the state changed and must be written
	Delete    bool   // the webhook must be deleted now
	Reason    string // why, when Delete
	Recovered bool   // a streak ended with a success
}

// Policy holds the tunable rules.
type Policy struct {
	// DeleteAfter is how long failures must run unbroken before the webhook
	// is deleted (0: DefaultDeleteAfter).
	DeleteAfter time.Duration
	// MailAt is the time of day (UTC, as an offset from midnight) at which
	// a mail day starts and the previous one is mailed (0: midnight).
	MailAt time.Duration
}

// After is DeleteAfter with its default filled in.
func (p Policy) After() time.Duration { return p.deleteAfter() }

func (p Policy) deleteAfter() time.Duration {
	if p.DeleteAfter <= 0 {
		return DefaultDeleteAfter
	}
	return p.DeleteAfter
}

// Day names the mail day t belongs to: the UTC date of t - MailAt, so a day
// runs from one mail time to the next.
func (p Policy) Day(t time.Time) string {
	return t.UTC().Add(-p.MailAt).Format(time.DateOnly)
}

// DayStart is when the mail day named day begins; it ends 24 h later, when
// its digest is due.
func (p Policy) DayStart(day string) (time.Time, error) {
	d, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return time.Time{}, err
	}
	return d.Add(p.MailAt), nil
}

// DeleteAt is when the 3-day rule deletes a webhook whose streak began at
// start.
func (p Policy) DeleteAt(start time.Time) time.Time { return start.Add(p.deleteAfter()) }

// Due reports whether s must be deleted under the 3-day rule at now.
func (p Policy) Due(s *State, now time.Time) bool {
	return s.Deleted.IsZero() && s.Failing() && !now.Before(p.DeleteAt(s.StreakStart))
}

// Apply applies one outcome to s and says what follows. now stands in for
// an outcome without a time; the 3-day rule is checked at the outcome's own
// time. An outcome for a webhook already deleted changes nothing, except a
// 410 Gone for one recorded as ReasonRemoved: the dispatcher's 410 deleted
// it before the coordinator's sweep got there, so the deletion is recorded
// as gone.
func (p Policy) Apply(s *State, o *outcomes.Outcome, now time.Time) Decision {
	at := o.At
	if at.IsZero() {
		at = now
	}
	if !s.Deleted.IsZero() {
		if o.Kind == outcomes.Gone && s.Reason == ReasonRemoved {
			s.LastStatus, s.LastError = 410, "410 Gone"
			s.Deleted, s.Reason = at, ReasonGone
			return Decision{Changed: true, Delete: true, Reason: ReasonGone}
		}
		return Decision{}
	}
	switch o.Kind {
	case outcomes.Gone:
		s.LastStatus, s.LastError = 410, "410 Gone"
		s.Deleted, s.Reason = at, ReasonGone
		return Decision{Changed: true, Delete: true, Reason: ReasonGone}
	case outcomes.Dead:
		p.countDay(s, at, true)
		return Decision{Changed: true, Delete: p.Due(s, at), Reason: ReasonFailing}
	case outcomes.Success:
		d := Decision{}
		if at.After(s.LastSuccess) {
			s.LastSuccess = at
			d.Changed = true
		}
		switch {
		case !s.Failing() || !at.After(s.StreakStart):
			// Not failing, or the success predates the streak.
		case !at.Before(s.LastFailure):
			s.StreakStart, s.Failures = time.Time{}, 0
			d.Changed, d.Recovered = true, true
		default:
			// Between the streak's start and its last failure: the run is
			// broken; only the last failure is known to follow the success.
			s.StreakStart, s.Failures = s.LastFailure, 1
			d.Changed = true
		}
		return d
	default: // Failure
		p.countDay(s, at, false)
		if !at.Before(s.LastFailure) {
			s.LastFailure = at
			s.LastStatus, s.LastError = o.Status, o.Error
		}
		if at.After(s.LastSuccess) {
			if !s.Failing() {
				s.StreakStart, s.Failures = at, 1
			} else {
				s.Failures++
				if at.Before(s.StreakStart) {
					s.StreakStart = at
				}
			}
		}
		return Decision{Changed: true, Delete: p.Due(s, at), Reason: ReasonFailing}
	}
}

// countDay counts a failure (or a dead delivery) in its mail day. A late
// outcome of a day before the one being counted is left out of the counts.
func (p Policy) countDay(s *State, at time.Time, dead bool) {
	day := p.Day(at)
	switch {
	case day > s.Day:
		s.Day, s.FailuresToday, s.DeadToday = day, 0, 0
	case day < s.Day:
		return
	}
	if dead {
		s.DeadToday++
	} else {
		s.FailuresToday++
	}
}

// MarkDeleted records a deletion under the 3-day rule at now.
func (p Policy) MarkDeleted(s *State, now time.Time, reason string) {
	s.Deleted, s.Reason = now, reason
}
