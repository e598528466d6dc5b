package coordinator

import (
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Keys names the coordinator's Redis keys under a prefix (default "gh:").
// The {…} parts are Redis Cluster hash tags: one webhook's health in its own
// slot, every key of one mail day in the day's slot.
//
//	{p}health:{webhook}         HASH  the webhook's health (see the field list in store.go)
//	{p}failing                  ZSET  webhook id → streak start (unix ms), swept for the 3-day rule
//	{p}day:{date}:apps          SET   applications with something to report for that mail day
//	{p}day:{date}:failing:{app} HASH  webhook id → msgpack DayEntry: failures that day
//	{p}day:{date}:deleted:{app} HASH  webhook id → msgpack DayEntry: deleted that day, with reason
//	{p}coord:applied            HASH  outcomes-topic partition → newest outcome time applied (unix ms)
//	{p}coord:watermark          STRING unix ms up to which every outcome is applied (see Watermark)
//	{{p}coord:watermark}:sweeps ZSET  sweeps in progress, "coordinator|real-time deadline" → the time they date deletions at; the watermark does not pass them
//
// The day keys expire after DayTTL; the health hash DeleteAfter + DayTTL
// after its last change.
type Keys struct{ Prefix string }

// DayTTL is how long a day's records are kept: the mail catch-up window
// (7 days) plus a day.
const DayTTL = 8 * 24 * time.Hour

// Health is the key of a webhook's health hash.
func (k Keys) Health(webhookID string) string { return k.Prefix + "health:{" + webhookID + "}" }

// Failing is the key of the failing set.
func (k Keys) Failing() string { return k.Prefix + "failing" }

// Applied is the key of the newest outcome time applied per partition.
func (k Keys) Applied() string { return k.Prefix + "coord:applied" }

// Watermark is the key of the coordinators' catch-up watermark: every
// outcome published (given the grace for its trip into Kafka) up to that
// time has been applied. The mail job waits for it.
func (k Keys) Watermark() string { return k.Prefix + "coord:watermark" }

// Sweeps is the key of the sweeps in progress; it shares the watermark's
// Redis Cluster slot (its hash tag is the watermark's key), so one script
// reads both.
func (k Keys) Sweeps() string { return "{" + k.Watermark() + "}:sweeps" }

// DayApps is the key of the set of applications with something to report.
func (k Keys) DayApps(day string) string { return k.Prefix + "day:{" + day + "}:apps" }

// DayFailing is the key of an application's failing webhooks of a day.
func (k Keys) DayFailing(day, appID string) string {
	return k.Prefix + "day:{" + day + "}:failing:" + appID
}

// DayDeleted is the key of an application's webhooks deleted on a day.
func (k Keys) DayDeleted(day, appID string) string {
	return k.Prefix + "day:{" + day + "}:deleted:" + appID
}

// DayEntry is one webhook's line in a day's record, as the mail shows it.
type DayEntry struct {
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

// DecodeDayEntry reads a DayEntry.
func DecodeDayEntry(b []byte) (*DayEntry, error) {
	e := new(DayEntry)
	if err := msgpack.Unmarshal(b, e); err != nil {
		return nil, err
	}
	return e, nil
}
