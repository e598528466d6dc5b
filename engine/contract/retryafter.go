package contract

import (
	"net/http"
	"time"
)

// maxRetryAfterSeconds bounds a delta-seconds value before it is turned
// into a duration (a year; the dispatcher caps it much lower).
const maxRetryAfterSeconds = 365 * 24 * 3600

// ParseRetryAfter reads a Retry-After header value, delta-seconds or an
// HTTP-date, as the wait it asks for from now. A date in the past asks for
// no wait (0, true); a value that is neither form is ignored (false).
func ParseRetryAfter(v []byte, now time.Time) (time.Duration, bool) {
	if len(v) == 0 {
		return 0, false
	}
	secs, digits := 0, true
	for _, c := range v {
		if c < '0' || c > '9' {
			digits = false
			break
		}
		if secs <= maxRetryAfterSeconds {
			secs = secs*10 + int(c-'0')
		}
	}
	if digits {
		return time.Duration(min(secs, maxRetryAfterSeconds)) * time.Second, true
	}
	t, err := http.ParseTime(string(v))
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}
