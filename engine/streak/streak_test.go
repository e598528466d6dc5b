package streak

import (
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/outcomes"
)

var t0 = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

func fail(at time.Time) *outcomes.Outcome {
	return &outcomes.Outcome{Kind: outcomes.Failure, WebhookID: "wh_1", Status: 500, Error: "500 Internal Server Error", Attempt: 1, At: at}
}

func success(at time.Time, attempt int) *outcomes.Outcome {
	return &outcomes.Outcome{Kind: outcomes.Success, WebhookID: "wh_1", Status: 200, Attempt: attempt, At: at}
}

// failures runs failures every step from start until before end, applying
// each at its own time, and returns the last decision.
func failures(p Policy, s *State, start, end time.Time, step time.Duration) (last Decision, n int) {
	for at := start; at.Before(end); at = at.Add(step) {
		last = p.Apply(s, fail(at), at)
		n++
		if last.Delete {
			return last, n
		}
	}
	return last, n
}

func TestFailuresJustUnderDeleteAfterThenSuccessKeepsAndResets(t *testing.T) {
	p := Policy{}
	var s State
	end := t0.Add(71*time.Hour + 59*time.Minute)
	d, n := failures(p, &s, t0, end.Add(time.Second), 15*time.Minute)
	if d.Delete {
		t.Fatalf("deleted after %d failures before 72 h", n)
	}
	if !s.StreakStart.Equal(t0) || s.Failures != n {
		t.Fatalf("streak = %v with %d failures, want %v with %d", s.StreakStart, s.Failures, t0, n)
	}
	if p.Due(&s, end) {
		t.Fatal("due at 71h59m")
	}
	d = p.Apply(&s, success(end.Add(30*time.Second), 1), end.Add(30*time.Second))
	if !d.Recovered || !d.Changed || d.Delete {
		t.Fatalf("success decision = %+v, want recovered", d)
	}
	if s.Failing() || s.Failures != 0 {
		t.Fatalf("streak not reset: %+v", s)
	}
	if p.Due(&s, t0.Add(100*time.Hour)) {
		t.Fatal("due after a reset")
	}
	// A new failure starts a fresh streak, not the old one.
	at := end.Add(time.Hour)
	p.Apply(&s, fail(at), at)
	if !s.StreakStart.Equal(at) || s.Failures != 1 {
		t.Fatalf("new streak = %v/%d, want %v/1", s.StreakStart, s.Failures, at)
	}
}

func TestSeventyTwoHoursOfFailuresDelete(t *testing.T) {
	p := Policy{}
	var s State
	d, _ := failures(p, &s, t0, t0.Add(80*time.Hour), 30*time.Minute)
	if !d.Delete || d.Reason != ReasonFailing {
		t.Fatalf("decision = %+v, want delete for failing", d)
	}
	if !s.LastFailure.Equal(t0.Add(72 * time.Hour)) {
		t.Fatalf("deleted at the failure of %v, want the one at 72h", s.LastFailure)
	}
	// The sweep reaches the same verdict without a new failure.
	var s2 State
	p.Apply(&s2, fail(t0), t0)
	if p.Due(&s2, t0.Add(72*time.Hour-time.Nanosecond)) || !p.Due(&s2, t0.Add(72*time.Hour)) {
		t.Fatal("sweep boundary is not exactly DeleteAfter")
	}
	// A shorter DeleteAfter is honoured.
	if !(Policy{DeleteAfter: time.Hour}).Due(&s2, t0.Add(time.Hour)) {
		t.Fatal("DeleteAfter ignored")
	}
}

func TestGoneDeletesAtOnce(t *testing.T) {
	p := Policy{}
	var s State
	d := p.Apply(&s, &outcomes.Outcome{Kind: outcomes.Gone, WebhookID: "wh_1", Status: 410, At: t0}, t0)
	if !d.Delete || d.Reason != ReasonGone || s.Deleted.IsZero() || s.Reason != ReasonGone {
		t.Fatalf("decision %+v state %+v, want deleted as gone", d, s)
	}
	// Later outcomes of a deleted webhook change nothing.
	if d := p.Apply(&s, fail(t0.Add(time.Minute)), t0.Add(time.Minute)); d.Changed || s.Failures != 0 {
		t.Fatalf("outcome after deletion applied: %+v", d)
	}
}

func TestSuccessRacingFailure(t *testing.T) {
	p := Policy{}
	// A retry succeeded at 10:00:01 while another attempt failed at
	// 10:00:00; the success is processed first, the failure arrives later.
	// The older failure must not start a streak.
	var s State
	p.Apply(&s, success(t0.Add(time.Second), 3), t0.Add(2*time.Second))
	d := p.Apply(&s, fail(t0), t0.Add(2*time.Second))
	if s.Failing() || d.Delete {
		t.Fatalf("an older failure started a streak: %+v", s)
	}
	if s.FailuresToday != 1 || s.LastStatus != 500 {
		t.Fatalf("the failure is not counted for the day: %+v", s)
	}

	// The other order: failure at 10:00:01 after a success at 10:00:00
	// that arrives late. The success is older, so the streak stands.
	s = State{}
	p.Apply(&s, fail(t0.Add(time.Second)), t0.Add(2*time.Second))
	p.Apply(&s, success(t0, 1), t0.Add(2*time.Second))
	if !s.Failing() || !s.StreakStart.Equal(t0.Add(time.Second)) {
		t.Fatalf("an older success reset a newer streak: %+v", s)
	}

	// A late success inside a streak breaks it: the streak restarts at the
	// last failure, which is known to follow the success.
	s = State{}
	for h := 0; h <= 48; h += 12 {
		at := t0.Add(time.Duration(h) * time.Hour)
		p.Apply(&s, fail(at), at)
	}
	d = p.Apply(&s, success(t0.Add(30*time.Hour), 2), t0.Add(49*time.Hour))
	if d.Recovered || !s.StreakStart.Equal(t0.Add(48*time.Hour)) || s.Failures != 1 {
		t.Fatalf("streak after a success in the middle = %+v (decision %+v), want restarted at 48h", s, d)
	}
	if p.Due(&s, t0.Add(100*time.Hour)) {
		t.Fatal("due 52h after the restarted streak's start")
	}
	if !p.Due(&s, t0.Add(120*time.Hour)) {
		t.Fatal("not due 72h after the restarted streak's start")
	}
}

func TestDayCounting(t *testing.T) {
	p := Policy{MailAt: 6 * time.Hour}
	if got := p.Day(t0.Add(5 * time.Hour)); got != "2026-11-19" {
		t.Fatalf("day of 05:00 with mail at 06:00 = %s, want the previous date", got)
	}
	var s State
	p.Apply(&s, fail(t0.Add(5*time.Hour)), t0)
	p.Apply(&s, fail(t0.Add(7*time.Hour)), t0)
	p.Apply(&s, fail(t0.Add(8*time.Hour)), t0)
	if s.Day != "2026-11-20" || s.FailuresToday != 2 {
		t.Fatalf("day %s count %d, want 2026-11-20 and 2", s.Day, s.FailuresToday)
	}
	p.Apply(&s, fail(t0.Add(4*time.Hour)), t0) // late, previous day
	if s.FailuresToday != 2 || s.Failures != 4 {
		t.Fatalf("late failure counted in the wrong day: %+v", s)
	}
	start, err := p.DayStart("2026-11-20")
	if err != nil || !start.Equal(t0.Add(6*time.Hour)) {
		t.Fatalf("DayStart = %v, %v", start, err)
	}
}

// A lagging coordinator applies, at t0+80h, a backlog of a failure at
// t0+69h (streak since t0) and a success at t0+70h. The failure is judged
// at its own time, so it does not delete, and the success then resets.
func TestBacklogIsJudgedAtTheOutcomesTime(t *testing.T) {
	p := Policy{}
	var s State
	p.Apply(&s, fail(t0), t0)
	now := t0.Add(80 * time.Hour)
	if d := p.Apply(&s, fail(t0.Add(69*time.Hour)), now); d.Delete {
		t.Fatalf("a failure at 69 h applied at 80 h deletes: %+v", d)
	}
	if d := p.Apply(&s, success(t0.Add(70*time.Hour), 1), now); !d.Recovered || s.Failing() {
		t.Fatalf("the success after it did not reset the streak: %+v %+v", d, s)
	}
	// An old failure applied to an empty state does not delete at once.
	var s2 State
	if d := p.Apply(&s2, fail(t0), now); d.Delete {
		t.Fatalf("an old failure on an empty state deletes: %+v", d)
	}
	// A failure that itself comes 72 h after the streak began does.
	if d := p.Apply(&s2, fail(t0.Add(72*time.Hour)), now); !d.Delete || d.Reason != ReasonFailing {
		t.Fatalf("the failure at 72 h did not delete: %+v", d)
	}
}

// The 3-day sweep found the webhook already gone from the registry (the
// dispatcher deleted it on a 410) and recorded it as removed; the Gone
// outcome arriving later records the deletion as gone.
func TestGoneAfterRemovedIsRecordedAsGone(t *testing.T) {
	p := Policy{}
	var s State
	p.Apply(&s, fail(t0), t0)
	p.MarkDeleted(&s, t0.Add(72*time.Hour), ReasonRemoved)
	at := t0.Add(72*time.Hour - time.Minute)
	d := p.Apply(&s, &outcomes.Outcome{Kind: outcomes.Gone, WebhookID: "wh_1", Status: 410, At: at}, t0.Add(73*time.Hour))
	if !d.Delete || d.Reason != ReasonGone || s.Reason != ReasonGone || !s.Deleted.Equal(at) {
		t.Fatalf("decision %+v state %+v, want the deletion recorded as gone at the 410", d, s)
	}
	// A second Gone (a replay from another delivery) changes nothing.
	if d := p.Apply(&s, &outcomes.Outcome{Kind: outcomes.Gone, WebhookID: "wh_1", At: at}, at); d.Changed {
		t.Fatalf("second Gone applied: %+v", d)
	}
}
