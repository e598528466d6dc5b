// Package daylog holds the day records the coordinators write and the daily
// mail reads: one Entry per webhook with something to report on a mail day,
// the Redis keys they live under, how long they are kept, and the key of the
// catch-up watermark that tells a reader a day's records are complete. It
// is pure: records and key names, no I/O.
package daylog

import (
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// TTL is how long a day's records are kept: the mail catch-up window
// (7 days) plus a day.
const TTL = 8 * 24 * time.Hour

// Keys names the day records' Redis keys under a prefix (default "gh:").
// Every key of one mail day shares the day's Redis Cluster hash tag {date}.
//
//	{p}day:{date}:apps          SET    applications with something to report for that mail day
//	{p}day:{date}:failing:{app} HASH   webhook id → msgpack Entry: failures that day
//	{p}day:{date}:deleted:{app} HASH   webhook id → msgpack Entry: deleted that day, with reason
//	{p}coord:watermark          STRING unix ms up to which every outcome is applied
type Keys struct{ Prefix string }

// Apps is the key of the set of applications with something to report.
func (k Keys) Apps(day string) string { return k.Prefix + "day:{" + day + "}:apps" }

// Failing is the key of an application's failing webhooks of a day.
func (k Keys) Failing(day, appID string) string {
	return k.Prefix + "day:{" + day + "}:failing:" + appID
}

// Deleted is the key of an application's webhooks deleted on a day.
func (k Keys) Deleted(day, appID string) string {
	return k.Prefix + "day:{" + day + "}:deleted:" + appID
}

// Watermark is the key of the coordinators' catch-up watermark: every
// outcome published (given the grace for its trip into Kafka) up to that
// time has been applied, so the day records up to then are complete. The
// mail job waits for it.
func (k Keys) Watermark() string { return k.Prefix + "coord:watermark" }

// Entry is one webhook's line in a day's record, as the mail shows it.
type Entry struct {
	WebhookID   string    `msgpack:"w"`
	AppID       string    `msgpack:"a"`
	AccountID   string    `msgpack:"c"`
	Event       string    `msgpack:"e"`
	Address     string    `msgpack:"u"`
	Failures    int       `msgpack:"f"`  // failures that day
	Dead        int       `msgpack:"dd"` // deliveries that went dead that day
	LastStatus  int       `msgpack:"s"`
	LastError   string    `msgpack:"x"`
	LastFailure time.Time `msgpack:"lf"`
	StreakStart time.Time `msgpack:"ss"` // zero: recovered since
	DeleteAt    time.Time `msgpack:"da"` // when the 3-day rule deletes it, if the streak goes on
	LastSuccess time.Time `msgpack:"ls"`
	Deleted     time.Time `msgpack:"dl"`
	Reason      string    `msgpack:"r"` // streak.ReasonGone or streak.ReasonFailing
}

// Decode reads an Entry.
func Decode(b []byte) (*Entry, error) {
	e := new(Entry)
	if err := msgpack.Unmarshal(b, e); err != nil {
		return nil, fmt.Errorf("cannot decode day entry: %w", err)
	}
	return e, nil
}
