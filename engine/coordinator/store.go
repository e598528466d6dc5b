package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/streak"
)

// Fields of the health hash {p}health:{webhook}:
//
//	v             version, bumped by every write (optimistic concurrency)
//	off           "partition:offset[,partition:offset…]", per partition the last outcome
//	              applied from it (replays are skipped; a webhook moves to another
//	              partition when partitions are added, and both may be replayed)
//	app, account, event, address   the webhook, as its outcomes described it
//	since         streak start, unix ms (0: not failing)
//	last_failure  unix ms;  failures: in the streak;  status, error: of the newest failure
//	last_success  unix ms
//	day, fday, dday   mail day being counted, its failures and dead deliveries
//	deleted, reason   unix ms and why, once deleted
//
// casScript writes the fields only if the version is still the one read,
// so two coordinators (around a rebalance, or a sweep racing an outcome)
// never overwrite each other's update: the loser re-reads and re-applies.
var casScript = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', tonumber(ARGV[1]) + 1, unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// record is one webhook's health as read from Redis.
type record struct {
	id       string
	version  string
	offs     map[int]int64 // outcomes-topic partition → last offset applied from it
	app      string
	account  string
	event    string
	address  string
	s        streak.State
	changed  bool
	conflict bool
	// deletedNow: this update is the one that marked it deleted (or that
	// turned a sweep's "removed" into the 410 that caused it).
	deletedNow bool
}

func ms(t time.Time) string {
	if t.IsZero() {
		return "0"
	}
	return strconv.FormatInt(t.UnixMilli(), 10)
}

func fromMS(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func parseRecord(id string, h map[string]string) *record {
	r := &record{id: id, version: "0", offs: map[int]int64{}}
	if len(h) == 0 {
		return r
	}
	if v := h["v"]; v != "" {
		r.version = v
	}
	for _, po := range strings.Split(h["off"], ",") {
		if p, o, ok := strings.Cut(po, ":"); ok {
			if n, err := strconv.ParseInt(o, 10, 64); err == nil {
				r.offs[atoi(p)] = n
			}
		}
	}
	r.app, r.account, r.event, r.address = h["app"], h["account"], h["event"], h["address"]
	r.s = streak.State{
		StreakStart: fromMS(h["since"]), LastFailure: fromMS(h["last_failure"]), Failures: atoi(h["failures"]),
		LastStatus: atoi(h["status"]), LastError: h["error"], LastSuccess: fromMS(h["last_success"]),
		Day: h["day"], FailuresToday: atoi(h["fday"]), DeadToday: atoi(h["dday"]),
		Deleted: fromMS(h["deleted"]), Reason: h["reason"],
	}
	return r
}

func (r *record) args(ttl time.Duration) []any {
	s := &r.s
	return []any{
		r.version, ttl.Milliseconds(),
		"off", r.offsField(),
		"app", r.app, "account", r.account, "event", r.event, "address", r.address,
		"since", ms(s.StreakStart), "last_failure", ms(s.LastFailure), "failures", s.Failures,
		"status", s.LastStatus, "error", s.LastError, "last_success", ms(s.LastSuccess),
		"day", s.Day, "fday", s.FailuresToday, "dday", s.DeadToday,
		"deleted", ms(s.Deleted), "reason", s.Reason,
	}
}

// offsField is the off field: the partitions in order, each with the last
// offset applied from it.
func (r *record) offsField() string {
	parts := slices.Sorted(maps.Keys(r.offs))
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(p))
		b.WriteByte(':')
		b.WriteString(strconv.FormatInt(r.offs[p], 10))
	}
	return b.String()
}

// maxError bounds the error text kept per webhook.
const maxError = 512

// item is one outcome with where it came from.
type item struct {
	o    *outcomes.Outcome
	part int
	off  int64
}

// apply applies the outcomes not applied yet, then the 3-day rule at the
// outcomes' own time less grace (a failure that itself came DeleteAfter
// plus grace into its streak deletes, unless a success in the batch broke
// the streak: a success dated up to grace before that failure may still be
// in another publisher's buffer or write retries, and reach Kafka after
// it; one dated earlier is in the partition before it) and,
// unless judge is zero, at judge: a time up to which every outcome is known
// to be applied (the catch-up watermark less the grace, see
// Coordinator.judgeAt). Judging at the clock instead would count the time a
// success spends in a publisher's buffer or in a coordinator's backlog as
// failing time and delete a webhook whose success is still unread. The
// deletion itself is dated now.
func (r *record) apply(p streak.Policy, items []item, now, judge time.Time, grace time.Duration) {
	wasDeleted, wasReason := !r.s.Deleted.IsZero(), r.s.Reason
	var crossed time.Time // newest failure that was DeleteAfter into its streak
	defer func() {
		r.deletedNow = !r.s.Deleted.IsZero() &&
			(!wasDeleted || (wasReason == streak.ReasonRemoved && r.s.Reason == streak.ReasonGone))
	}()
	for _, it := range items {
		if last, ok := r.offs[it.part]; ok && it.off <= last {
			continue // a replay of what Redis already has
		}
		o := it.o
		if len(o.Error) > maxError {
			o.Error = o.Error[:maxError]
		}
		if o.AppID != "" {
			r.app, r.account, r.event, r.address = o.AppID, o.AccountID, o.Event, o.Address
		}
		d := p.Apply(&r.s, o, now)
		r.offs[it.part] = it.off
		r.changed = true
		if at := cmp.Or(o.At, now); d.Delete && d.Reason == streak.ReasonFailing && at.After(crossed) {
			crossed = at
		}
	}
	// The rule is decided once the whole batch is applied, so a success
	// later in the batch (published late, dated earlier) still counts: at
	// the newest failure that crossed DeleteAfter less grace, then at judge.
	if (!crossed.IsZero() && p.Due(&r.s, crossed.Add(-grace))) || (!judge.IsZero() && p.Due(&r.s, judge)) {
		p.MarkDeleted(&r.s, now, streak.ReasonFailing)
		r.changed = true
	}
}

// settle brings the webhooks ids to their new state: it reads their health,
// applies their outcomes (none for a sweep) and, unless judge is zero, the
// 3-day rule at judge, writes the result with a version check (re-reading on a
// conflict), and then carries out what follows: deletions, the failing set
// and the day records.
func (c *Coordinator) settle(ctx context.Context, ids []string, items map[string][]item, now, judge time.Time) error {
	final := make([]*record, 0, len(ids))
	pending := ids
	for round := 0; len(pending) > 0; round++ {
		if round == 20 {
			return fmt.Errorf("cannot update webhook health: %d webhooks still conflicting after %d rounds", len(pending), round)
		}
		if round > 0 {
			// Another coordinator wrote first: step aside a random moment
			// so two writers do not keep colliding.
			if !backoff.Sleep(ctx, time.Duration(rand.IntN(round*2+1))*time.Millisecond) {
				return fmt.Errorf("cannot update webhook health: %w", ctx.Err())
			}
		}
		recs, err := c.load(ctx, pending)
		if err != nil {
			return err
		}
		for _, r := range recs {
			r.apply(c.o.Policy, items[r.id], now, judge, c.o.Grace)
			if r.deletedNow && r.s.Reason == streak.ReasonFailing {
				stored, err := c.o.Registry.Stored(ctx, r.id)
				if err != nil {
					return err
				}
				if !stored {
					// Its owner deleted it through the API: nothing to report.
					r.s.Reason = streak.ReasonRemoved
				}
			}
		}
		if err := c.store(ctx, recs); err != nil {
			return err
		}
		pending = pending[:0:0]
		for _, r := range recs {
			if r.conflict {
				pending = append(pending, r.id)
				c.Stats.Conflicts.Inc()
			} else {
				final = append(final, r)
			}
		}
	}
	if c.afterStore != nil {
		c.afterStore()
	}
	// The effects are not version-checked (the failing set is not in a
	// webhook's slot): another coordinator may write a newer state and
	// carry out its effects before these run, which would then undo them.
	// So after carrying them out, check the version; where it moved, carry
	// out the newest state's effects again. The last effects to run are
	// then always those of the state Redis holds.
	for round := 0; len(final) > 0; round++ {
		if round == 20 {
			return fmt.Errorf("cannot settle the effects of webhook health: %d webhooks still changing after %d rounds", len(final), round)
		}
		if err := c.effects(ctx, final, now); err != nil {
			return err
		}
		moved, err := c.moved(ctx, final)
		if err != nil {
			return err
		}
		if len(moved) == 0 {
			return nil
		}
		if final, err = c.load(ctx, moved); err != nil {
			return err
		}
	}
	return nil
}

// moved returns the webhooks among recs whose health version is no longer
// the one recs hold.
func (c *Coordinator) moved(ctx context.Context, recs []*record) ([]string, error) {
	cmds := make([]*redis.StringCmd, len(recs))
	_, err := c.o.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range recs {
			cmds[i] = p.HGet(ctx, c.keys.Health(r.id), "v")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("cannot re-read webhook health versions: %w", err)
	}
	var ids []string
	for i, r := range recs {
		v, err := cmds[i].Result()
		switch {
		case errors.Is(err, redis.Nil):
			v = "0"
		case err != nil:
			return nil, fmt.Errorf("cannot re-read the health version of webhook %s: %w", r.id, err)
		}
		if v != r.version {
			ids = append(ids, r.id)
		}
	}
	return ids, nil
}

func (c *Coordinator) load(ctx context.Context, ids []string) ([]*record, error) {
	return loadRecords(ctx, c.o.Redis, c.keys, ids)
}

func loadRecords(ctx context.Context, rdb redis.UniversalClient, keys Keys, ids []string) ([]*record, error) {
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, keys.Health(id))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read webhook health: %w", err)
	}
	recs := make([]*record, len(ids))
	for i, id := range ids {
		recs[i] = parseRecord(id, cmds[i].Val())
	}
	return recs, nil
}

// Health reads the health of the webhooks ids as the coordinators keep
// it, in one round trip; a webhook with no record yet (never failed) has
// a zero State.
func Health(ctx context.Context, rdb redis.UniversalClient, keys Keys, ids []string) ([]streak.State, error) {
	recs, err := loadRecords(ctx, rdb, keys, ids)
	if err != nil {
		return nil, err
	}
	out := make([]streak.State, len(recs))
	for i, r := range recs {
		out[i] = r.s
	}
	return out, nil
}

func (c *Coordinator) store(ctx context.Context, recs []*record) error {
	ttl := c.o.Policy.After() + daylog.TTL
	cmds := make(map[*record]*redis.Cmd)
	_, err := c.o.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, r := range recs {
			if r.changed {
				cmds[r] = casScript.Eval(ctx, p, []string{c.keys.Health(r.id)}, r.args(ttl)...)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot write webhook health: %w", err)
	}
	for r, cmd := range cmds {
		n, _ := cmd.Int()
		r.conflict = n == 0
		if !r.conflict {
			r.version = strconv.Itoa(atoi(r.version) + 1) // as casScript wrote it
		}
	}
	return nil
}

func entryOf(r *record, p streak.Policy) daylog.Entry {
	s := &r.s
	e := daylog.Entry{
		WebhookID: r.id, AppID: r.app, AccountID: r.account, Event: r.event, Address: r.address,
		Failures: s.FailuresToday, Dead: s.DeadToday, LastStatus: s.LastStatus, LastError: s.LastError,
		LastFailure: s.LastFailure, StreakStart: s.StreakStart, LastSuccess: s.LastSuccess,
		Deleted: s.Deleted, Reason: s.Reason,
	}
	if s.Failing() && s.Deleted.IsZero() {
		e.DeleteAt = p.DeleteAt(s.StreakStart)
	}
	return e
}

// effects deletes what must go and writes the failing set and day records
// from the final states. Everything here is derived from the state alone,
// so doing it again after a crash (the batch is replayed) is harmless.
func (c *Coordinator) effects(ctx context.Context, recs []*record, now time.Time) error {
	for _, r := range recs {
		if r.s.Deleted.IsZero() || r.app == "" {
			continue
		}
		// Only the 3-day rule deletes here: a 410's webhook was deleted by
		// the dispatcher before it published the outcome. A replayed batch
		// deletes again what this copy of the registry still has.
		if r.s.Reason == streak.ReasonFailing && (r.deletedNow || c.o.Registry.Webhook(r.id) != nil) {
			err := c.o.Registry.DeleteWebhook(ctx, r.id)
			if err != nil && !errors.Is(err, registry.ErrNotFound) {
				return fmt.Errorf("cannot delete webhook %s: %w", r.id, err)
			}
		}
		if !r.deletedNow || r.s.Reason == streak.ReasonRemoved {
			continue
		}
		if r.s.Reason == streak.ReasonFailing {
			c.Stats.DeletedFailing.Inc()
		} else {
			c.Stats.DeletedGone.Inc()
		}
		c.o.Log.Info().Str("webhook_id", r.id).Str("app_id", r.app).Str("reason", r.s.Reason).
			Time("streak_start", r.s.StreakStart).Int("failures", r.s.Failures).Msg("webhook deleted")
	}
	_, err := c.o.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		day := func(day, key string, e *daylog.Entry) error {
			raw, err := msgpack.Marshal(e)
			if err != nil {
				return fmt.Errorf("cannot encode day entry: %w", err)
			}
			p.HSet(ctx, key, e.WebhookID, raw)
			p.PExpire(ctx, key, daylog.TTL)
			p.SAdd(ctx, c.keys.DayApps(day), e.AppID)
			p.PExpire(ctx, c.keys.DayApps(day), daylog.TTL)
			return nil
		}
		for _, r := range recs {
			if r.app == "" {
				// No health kept (it expired): nothing to sweep or report.
				p.ZRem(ctx, c.keys.Failing(), r.id)
				continue
			}
			e := entryOf(r, c.o.Policy)
			switch {
			case r.s.Reason == streak.ReasonRemoved:
				p.ZRem(ctx, c.keys.Failing(), r.id)
			case !r.s.Deleted.IsZero():
				p.ZRem(ctx, c.keys.Failing(), r.id)
				d := c.o.Policy.Day(r.s.Deleted)
				if err := day(d, c.keys.DayDeleted(d, r.app), &e); err != nil {
					return err
				}
			case r.s.Failing():
				p.ZAdd(ctx, c.keys.Failing(), redis.Z{Score: float64(r.s.StreakStart.UnixMilli()), Member: r.id})
			default:
				p.ZRem(ctx, c.keys.Failing(), r.id)
			}
			if r.s.Day != "" && r.s.FailuresToday+r.s.DeadToday > 0 {
				if err := day(r.s.Day, c.keys.DayFailing(r.s.Day, r.app), &e); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot write failing set and day records: %w", err)
	}
	return nil
}
