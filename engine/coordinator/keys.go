package coordinator

import "github.com/geckohook/geckohook/engine/daylog"

// Keys names the coordinator's Redis keys under a prefix (default "gh:").
// The {…} parts are Redis Cluster hash tags: one webhook's health in its own
// slot, every key of one mail day in the day's slot.
//
//	{p}health:{webhook}         HASH  the webhook's health (see the field list in store.go)
//	{p}failing                  ZSET  webhook id → streak start (unix ms), swept for the 3-day rule
//	{p}day:{date}:…             the day records the mail reads (package daylog)
//	{p}coord:applied            HASH  outcomes-topic partition → newest outcome time applied (unix ms)
//	{p}coord:watermark          STRING unix ms up to which every outcome is applied (see Watermark)
//	{{p}coord:watermark}:sweeps ZSET  sweeps in progress, "coordinator|real-time deadline" → the time they date deletions at; the watermark does not pass them
//
// The day keys expire after daylog.TTL; the health hash DeleteAfter +
// daylog.TTL after its last change.
type Keys struct{ Prefix string }

// days names the day records' keys, which package daylog owns.
func (k Keys) days() daylog.Keys { return daylog.Keys{Prefix: k.Prefix} }

// Health is the key of a webhook's health hash.
func (k Keys) Health(webhookID string) string { return k.Prefix + "health:{" + webhookID + "}" }

// Failing is the key of the failing set.
func (k Keys) Failing() string { return k.Prefix + "failing" }

// Applied is the key of the newest outcome time applied per partition.
func (k Keys) Applied() string { return k.Prefix + "coord:applied" }

// Watermark is the key of the coordinators' catch-up watermark
// (daylog.Keys.Watermark).
func (k Keys) Watermark() string { return k.days().Watermark() }

// Sweeps is the key of the sweeps in progress; it shares the watermark's
// Redis Cluster slot (its hash tag is the watermark's key), so one script
// reads both.
func (k Keys) Sweeps() string { return "{" + k.Watermark() + "}:sweeps" }

// DayApps is daylog.Keys.Apps.
func (k Keys) DayApps(day string) string { return k.days().Apps(day) }

// DayFailing is daylog.Keys.Failing.
func (k Keys) DayFailing(day, appID string) string { return k.days().Failing(day, appID) }

// DayDeleted is daylog.Keys.Deleted.
func (k Keys) DayDeleted(day, appID string) string { return k.days().Deleted(day, appID) }
