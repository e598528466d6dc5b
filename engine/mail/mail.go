// Package mail is the daily digest job: once per mail day, one coordinator
// (holding a per-day Redis lock with a fencing token) sends every
// application that had failing or deleted webhooks that day one mail
// listing them, over SMTP or, with no SMTP server configured, as .eml files
// in an outbox directory.
//
// Guarantees. A digest is marked sent (gh:mail:{date}:{app}) only after the
// SMTP server accepted it, and only by the lock holder whose token is still
// current. A send that fails for a temporary reason is retried with backoff
// (1 min doubling to 30 min of the injected clock) until 24 h after the
// first try; a permanent refusal (5xx to the recipient or the message) is
// logged and marked so it is not retried. The last day completed in order
// is kept (gh:mail:done); every day after it is caught up in order, back to
// the oldest whose records have not expired (8 days; older ones are logged
// and counted as skipped), so a restart never skips a day, and the per-application
// marks keep it from sending a day twice. The one gap: a coordinator that
// dies, stalls past the lock's TTL or loses Redis after the SMTP server accepted a
// digest and before the mark was written makes the next lock holder send
// that one digest again, so an application gets at most one extra copy per
// such crash, with the same Message-ID. Nothing else is sent twice. A
// normal shutdown is not such a crash: a send in progress finishes (or
// fails by its deadline) and its mark is written (5 s at most) before the
// job stops.
//
// Catching up. A day is mailed only once the coordinators have applied
// every outcome of it: the catch-up watermark they keep in Redis
// (daylog.Keys.Watermark) must have reached the day's end plus Grace.
// After downtime, or while the coordinators lag, the digest waits for them
// instead of being built from records hours behind. The retry backoff of
// a day is kept in Redis, so every coordinator process honours it.
package mail

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	netmail "net/mail"
	"slices"
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/streak"
)

// Options configure a Job. Zero values mean the defaults in brackets.
type Options struct {
	Redis    redis.UniversalClient
	Prefix   string // ("gh:")
	Registry *registry.Registry
	// Policy: MailAt (00:00 UTC) and DeleteAfter (72h), as the coordinator's.
	Policy streak.Policy

	From         string // sender address ("geckohook@localhost")
	SMTPAddr     string // host:port; empty: write .eml files into Outbox
	SMTPUser     string
	SMTPPassword string
	// SMTPTLS configures STARTTLS (nil: system roots, server name from
	// SMTPAddr).
	SMTPTLS   *tls.Config
	Outbox    string // ("./outbox")
	Templates string // directory overriding the built-in templates

	// Poll is how often the job looks for a day to mail (15s, real time).
	Poll time.Duration
	// LockTTL bounds how long a dead holder keeps the day's lock (2m, real
	// time); the holder renews it before every send.
	LockTTL time.Duration
	// SendTimeout bounds one SMTP conversation (1m).
	SendTimeout time.Duration
	// RetryMin, RetryMax: backoff after a failed send (1m, 30m, clock time).
	RetryMin, RetryMax time.Duration
	// CatchUp: how many ended days are looked at when no day was ever
	// completed (7). Once one was, every later day is mailed in order,
	// back to the oldest whose records have not expired (DayTTL); older
	// ones are logged and counted as skipped.
	CatchUp int
	// Grace: a day is mailed once the coordinators' catch-up watermark is
	// this far past its end (2m), which covers an outcome's trip from the
	// dispatcher's buffer into Kafka.
	Grace time.Duration

	// AfterAccept, when set, runs after the server accepted a digest and
	// before it is marked sent; an error stops the run there as a crash
	// would (no mark, lock left to expire). For tests.
	AfterAccept func(day, appID string) error

	// Metrics is the process's set; the job's metrics go in it (nil: a
	// set of its own).
	Metrics *metrics.Set

	Now func() time.Time // clock (time.Now)
	Log zerolog.Logger
}

// Stats are cumulative counters of a Job, in its metrics set.
type Stats struct {
	// Digests by result (Failed: tries that will be retried or given up).
	Sent, Failed, Rejected ops.Counter
	// DaysSkipped: days never mailed because their records had expired
	// before the watermark reached them.
	DaysSkipped ops.Counter
	// WatermarkAge: how far (seconds of the clock) the catch-up watermark
	// was behind at the last pass; -1 before one was seen.
	WatermarkAge ops.Gauge
}

// Job runs the daily digest.
type Job struct {
	o       Options
	keys    daylog.Keys
	tmpl    *Templates
	send    sendFunc
	waitLog zerolog.Logger // sampled: "waiting for the coordinators"
	Stats   Stats
}

// retryState is a day's backoff after failed sends, kept in Redis
// ({p}mail:{date}:retry) so that every coordinator process honours it.
type retryState struct {
	next  time.Time // no try before
	tries int       // failed tries so far
	first time.Time // first failed try; retries stop 24 h after it
}

// New returns a Job; it fails only on unreadable templates.
func New(o Options) (*Job, error) {
	if o.Prefix == "" {
		o.Prefix = contract.DefaultRedisPrefix
	}
	if o.From == "" {
		o.From = "geckohook@localhost"
	}
	if o.Outbox == "" {
		o.Outbox = "./outbox"
	}
	if o.Poll <= 0 {
		o.Poll = 15 * time.Second
	}
	if o.LockTTL <= 0 {
		o.LockTTL = 2 * time.Minute
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = time.Minute
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Minute
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 30 * time.Minute
	}
	if o.SendTimeout >= o.LockTTL/2 {
		// The lock, renewed before each send, must outlast the send.
		o.SendTimeout = o.LockTTL / 2
	}
	if o.CatchUp <= 0 {
		o.CatchUp = 7
	}
	if o.Grace <= 0 {
		o.Grace = 2 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	t, err := LoadTemplates(o.Templates)
	if err != nil {
		return nil, err
	}
	j := &Job{o: o, keys: daylog.Keys{Prefix: o.Prefix}, tmpl: t,
		waitLog: o.Log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Minute})}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
	j.Stats = Stats{
		Sent:         ops.NewCounter(o.Metrics, `geckohook_digests_total{result="sent"}`),
		Failed:       ops.NewCounter(o.Metrics, `geckohook_digests_total{result="failed"}`),
		Rejected:     ops.NewCounter(o.Metrics, `geckohook_digests_total{result="rejected"}`),
		DaysSkipped:  ops.NewCounter(o.Metrics, "geckohook_digest_days_skipped_total"),
		WatermarkAge: ops.NewGauge(o.Metrics, "geckohook_coordinator_watermark_age_seconds"),
	}
	j.Stats.WatermarkAge.Store(-1)
	if o.SMTPAddr != "" {
		s := &smtpSender{addr: o.SMTPAddr, user: o.SMTPUser, password: o.SMTPPassword, tlsConfig: o.SMTPTLS}
		j.send = s.send
	} else {
		j.send = outbox(o.Outbox)
	}
	return j, nil
}

func (j *Job) markKey(day, app string) string { return j.o.Prefix + "mail:{" + day + "}:" + app }
func (j *Job) lockKey(day string) string      { return j.o.Prefix + "mail:{" + day + "}:lock" }
func (j *Job) tokenKey(day string) string     { return j.o.Prefix + "mail:{" + day + "}:token" }
func (j *Job) retryKey(day string) string     { return j.o.Prefix + "mail:{" + day + "}:retry" }
func (j *Job) doneKey() string                { return j.o.Prefix + "mail:done" }

// Run looks for days to mail every Poll until ctx ends.
func (j *Job) Run(ctx context.Context) error {
	t := time.NewTicker(j.o.Poll)
	defer t.Stop()
	for {
		if err := j.RunDue(ctx); err != nil && ctx.Err() == nil {
			j.o.Log.Warn().Err(err).Msg("daily mail pass failed; trying again shortly")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunDue mails every ended day not completed yet whose outcomes the
// coordinators have all applied (the catch-up window at most), oldest
// first, and advances the completed-day mark.
func (j *Job) RunDue(ctx context.Context) error {
	now := j.o.Now()
	p := j.o.Policy
	wms, err := j.o.Redis.Get(ctx, j.keys.Watermark()).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("cannot read the coordinators' catch-up watermark: %w", err)
	}
	wmMS, _ := strconv.ParseInt(wms, 10, 64)
	ended := addDays(p.Day(now), -1) // the latest day that has ended
	if wmMS > 0 {
		j.Stats.WatermarkAge.Store(max(0, now.UnixMilli()-wmMS) / 1000)
	}
	if wmMS <= 0 {
		j.waitLog.Info().Str("day", ended).Msg("no catch-up watermark yet; the daily mail waits for the coordinators")
		return nil
	}
	// The latest day whose end + Grace the watermark (and the clock) passed.
	upTo := time.UnixMilli(wmMS).UTC()
	if now.Before(upTo) {
		upTo = now
	}
	last := addDays(p.Day(upTo.Add(-j.o.Grace)), -1)
	if last < ended {
		j.waitLog.Info().Str("day", ended).Time("watermark", time.UnixMilli(wmMS).UTC()).
			Msg("the coordinators have outcomes of an ended day left to apply; its digest waits for them")
	}
	// The oldest day whose records are all still in Redis: every write to
	// a day's records happens after the day began and renews them for
	// DayTTL.
	floor := addDays(p.Day(now.Add(-daylog.TTL)), 1)
	done, err := j.o.Redis.Get(ctx, j.doneKey()).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("cannot read the last mailed day: %w", err)
	}
	if _, err := time.Parse(time.DateOnly, done); done != "" && err != nil {
		j.o.Log.Error().Str("done", done).Msg("unreadable last mailed day; catching up as on a first start")
		done = ""
	}
	var first string
	switch {
	case done == "":
		// Never ran: look back CatchUp days.
		first = max(addDays(last, -(j.o.CatchUp-1)), floor)
	case addDays(done, 1) < floor:
		// The watermark was stuck longer than the records live: those
		// days cannot be mailed any more. Said once (by whoever moves the
		// completed-day mark past them), loudly.
		first = floor
		moved, err := advanceScript.Run(ctx, j.o.Redis, []string{j.doneKey()}, addDays(floor, -1)).Int()
		if err != nil {
			return fmt.Errorf("cannot record the last mailed day: %w", err)
		}
		if moved == 1 {
			n := 0
			for d := addDays(done, 1); d < floor; d = addDays(d, 1) {
				n++
			}
			j.Stats.DaysSkipped.Add(n)
			j.o.Log.Error().Str("from", addDays(done, 1)).Str("to", addDays(floor, -1)).Int("days", n).
				Time("watermark", time.UnixMilli(wmMS).UTC()).
				Msg("daily digests skipped: their records expired before the coordinators' watermark reached them")
		}
	default:
		first = addDays(done, 1)
	}
	contiguous := true
	for day := first; day <= last; day = addDays(day, 1) {
		complete, err := j.runDay(ctx, day, now)
		if err != nil {
			return err
		}
		if !complete {
			contiguous = false
			continue
		}
		if contiguous {
			if err := advanceScript.Run(ctx, j.o.Redis, []string{j.doneKey()}, day).Err(); err != nil {
				return fmt.Errorf("cannot record the last mailed day: %w", err)
			}
		}
	}
	return nil
}

func addDays(day string, n int) string {
	t, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return day
	}
	return t.AddDate(0, 0, n).Format(time.DateOnly)
}

var (
	// retryScript records a day's backoff (KEYS[2]) if the token still
	// holds the lock (KEYS[1]).
	retryScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'next', ARGV[2], 'tries', ARGV[3], 'first', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1`)
	// advanceScript moves gh:mail:done forward only: 1 moved, 0 not.
	advanceScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur < ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]); return 1 end
return 0`)
	// renewScript extends the lock if the token still holds it.
	renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)
	// releaseScript deletes the lock if the token still holds it.
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)
	// markScript marks a digest (KEYS[2]) with a state, fenced by the lock
	// token: 1 marked, 0 the lock is no longer ours.
	markScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1`)
)

// markTimeout bounds writing a digest's mark, which is done even when the
// job is being stopped.
const markTimeout = 5 * time.Second

// errLockLost stops a run whose lock went to another coordinator.
var errLockLost = errors.New("mail lock lost to another coordinator")

// runDay sends the day's digests under the day's lock and reports whether
// every application of the day is marked.
func (j *Job) runDay(ctx context.Context, day string, now time.Time) (bool, error) {
	rs, err := j.retryState(ctx, day)
	if err != nil {
		return false, err
	}
	if now.Before(rs.next) {
		return false, nil
	}
	apps, err := j.o.Redis.SMembers(ctx, j.keys.Apps(day)).Result()
	if err != nil {
		return false, fmt.Errorf("cannot read applications to mail for %s: %w", day, err)
	}
	slices.Sort(apps)
	pending, err := j.unmarked(ctx, day, apps)
	if err != nil || len(pending) == 0 {
		return err == nil, err
	}

	token, err := j.o.Redis.Incr(ctx, j.tokenKey(day)).Result()
	if err != nil {
		return false, fmt.Errorf("cannot take a mail lock token: %w", err)
	}
	tok := strconv.FormatInt(token, 10)
	ok, err := j.o.Redis.SetNX(ctx, j.lockKey(day), tok, j.o.LockTTL).Result()
	if err != nil {
		return false, fmt.Errorf("cannot take the mail lock for %s: %w", day, err)
	}
	if !ok {
		return false, nil // another coordinator is on it
	}
	_ = j.o.Redis.PExpire(ctx, j.tokenKey(day), daylog.TTL).Err()
	log := j.o.Log.With().Str("day", day).Int64("token", token).Logger()
	log.Info().Int("applications", len(pending)).Msg("sending daily digests")

	failed := 0
	crashed := false
	defer func() {
		if crashed {
			return // as a crash: the lock expires on its own
		}
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = releaseScript.Run(rctx, j.o.Redis, []string{j.lockKey(day)}, tok).Err()
		cancel()
	}()
	start, _ := j.o.Policy.DayStart(day)
	if rs.first.IsZero() {
		rs.first = now
	}
	giveUp := !now.Before(rs.first.Add(24 * time.Hour))
	for _, app := range pending {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		renewed, err := renewScript.Run(ctx, j.o.Redis, []string{j.lockKey(day)}, tok, j.o.LockTTL.Milliseconds()).Int()
		if err != nil {
			return false, fmt.Errorf("cannot renew the mail lock: %w", err)
		}
		if renewed == 0 {
			log.Warn().Msg("mail lock lost; another coordinator carries on")
			return false, nil
		}
		// Another coordinator may have sent it between our reading the
		// marks and taking the lock.
		if n, err := j.o.Redis.Exists(ctx, j.markKey(day, app)).Result(); err != nil {
			return false, fmt.Errorf("cannot read the digest mark of %s for %s: %w", app, day, err)
		} else if n == 1 {
			continue
		}
		state, err := j.sendOne(ctx, day, app, start)
		if errors.Is(err, errCrash) {
			crashed = true
			return false, err
		}
		if err != nil {
			failed++
			j.Stats.Failed.Inc()
			if !giveUp {
				log.Warn().Err(err).Str("app_id", app).Msg("cannot send daily digest; will retry")
				continue
			}
			log.Error().Err(err).Str("app_id", app).Msg("cannot send daily digest; giving up on this day's digest after 24 h of retries")
			state = "expired"
		}
		// The mark outlives a shutdown that arrives during the send: once
		// the server accepted, not writing it would make the next process
		// send the digest again.
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
		marked, err := markScript.Run(mctx, j.o.Redis, []string{j.lockKey(day), j.markKey(day, app)},
			tok, state, daylog.TTL.Milliseconds()).Int()
		cancel()
		if err != nil {
			// Sent but not marked: the next run sends it again (at most once more).
			return false, fmt.Errorf("cannot mark the digest of %s for %s: %w", app, day, err)
		}
		if marked == 0 {
			log.Warn().Str("app_id", app).Str("state", state).Msg("mail lock lost before marking; the next holder may send this digest once more")
			return false, nil
		}
	}
	if failed > 0 && !giveUp {
		wait := min(j.o.RetryMin<<min(rs.tries, 16), j.o.RetryMax)
		rs.tries++
		rs.next = now.Add(wait)
		if err := retryScript.Run(ctx, j.o.Redis, []string{j.lockKey(day), j.retryKey(day)}, tok,
			rs.next.UnixMilli(), rs.tries, rs.first.UnixMilli(), daylog.TTL.Milliseconds()).Err(); err != nil {
			return false, fmt.Errorf("cannot record the retry time of %s: %w", day, err)
		}
		log.Info().Int("failed", failed).Dur("retry_in_ms", wait).Msg("daily digests incomplete")
		return false, nil
	}
	if err := j.o.Redis.Del(ctx, j.retryKey(day)).Err(); err != nil {
		log.Warn().Err(err).Msg("cannot clear the day's retry state; it expires on its own")
	}
	log.Info().Msg("daily digests done")
	return true, nil
}

// retryState reads a day's backoff; none: try now.
func (j *Job) retryState(ctx context.Context, day string) (retryState, error) {
	h, err := j.o.Redis.HGetAll(ctx, j.retryKey(day)).Result()
	if err != nil {
		return retryState{}, fmt.Errorf("cannot read the retry state of %s: %w", day, err)
	}
	ms := func(k string) time.Time {
		n, err := strconv.ParseInt(h[k], 10, 64)
		if err != nil || n <= 0 {
			return time.Time{}
		}
		return time.UnixMilli(n).UTC()
	}
	tries, _ := strconv.Atoi(h["tries"])
	return retryState{next: ms("next"), tries: tries, first: ms("first")}, nil
}

// unmarked returns the applications of apps whose digest is not marked.
func (j *Job) unmarked(ctx context.Context, day string, apps []string) ([]string, error) {
	if len(apps) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.IntCmd, len(apps))
	_, err := j.o.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, a := range apps {
			cmds[i] = p.Exists(ctx, j.markKey(day, a))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read digest marks for %s: %w", day, err)
	}
	var out []string
	for i, a := range apps {
		if cmds[i].Val() == 0 {
			out = append(out, a)
		}
	}
	return out, nil
}

// MaxListed bounds the webhooks one digest lists per section; the rest are
// counted.
const MaxListed = 500

var errCrash = errors.New("simulated crash after the SMTP server accepted")

// sendOne builds and sends one application's digest and returns the state
// to mark: "sent", "rejected" (refused for good), "nothing" (no entries
// left) or "no-recipient" (application gone or without a usable address).
func (j *Job) sendOne(ctx context.Context, day, appID string, start time.Time) (string, error) {
	d, err := j.digest(ctx, day, appID, start)
	if err != nil {
		return "", err
	}
	if d.Empty() {
		return "nothing", nil
	}
	log := j.o.Log.With().Str("day", day).Str("app_id", appID).Logger()
	a := j.o.Registry.App(appID)
	if a == nil {
		log.Warn().Msg("application gone; no digest")
		return "no-recipient", nil
	}
	addr, err := netmail.ParseAddress(a.DeveloperEmail)
	if err != nil {
		log.Warn().Err(err).Msg("application has no usable developer email; no digest")
		return "no-recipient", nil
	}
	d.App = App{ID: a.ID, Name: a.Name, Email: addr.Address}
	msg, err := j.tmpl.Render(d, j.o.From, j.o.Now())
	if err != nil {
		return "", err
	}
	// A shutdown does not cut a conversation short (a cancel mid-DATA
	// would leave it unknown whether the server accepted): it finishes, or
	// fails by its deadline, and its result is marked.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), j.o.SendTimeout)
	err = j.send(sctx, j.o.From, addr.Address, msg, day+"_"+appID)
	cancel()
	if errors.Is(err, errPermanent) {
		j.Stats.Rejected.Inc()
		log.Error().Err(err).Msg("daily digest refused by the mail server; not retried")
		return "rejected", nil
	}
	if err != nil {
		return "", err
	}
	j.Stats.Sent.Inc()
	log.Info().Int("failing", len(d.Failing)).Int("deleted", len(d.Deleted)).Msg("daily digest sent")
	if j.o.AfterAccept != nil {
		if err := j.o.AfterAccept(day, appID); err != nil {
			return "", fmt.Errorf("%w: %v", errCrash, err)
		}
	}
	return "sent", nil
}

// digest reads an application's day records.
func (j *Job) digest(ctx context.Context, day, appID string, start time.Time) (*Digest, error) {
	return ReadDigest(ctx, j.o.Redis, j.keys, j.o.Policy, day, appID, start, j.o.Log)
}

// ReadDigest reads an application's day records of the mail day day
// (which begins at start) into the digest the daily mail sends, without
// its App: the mail job builds every digest with it, and the developer
// portal shows the last days' digests as mailed. Unreadable entries are
// logged and skipped.
func ReadDigest(ctx context.Context, rdb redis.UniversalClient, keys daylog.Keys, p streak.Policy, day, appID string,
	start time.Time, log zerolog.Logger) (*Digest, error) {
	var failing, deleted *redis.MapStringStringCmd
	_, err := rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		failing = pl.HGetAll(ctx, keys.Failing(day, appID))
		deleted = pl.HGetAll(ctx, keys.Deleted(day, appID))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read day records of %s for %s: %w", appID, day, err)
	}
	return digestOf(day, start, p, failing.Val(), deleted.Val(), log), nil
}

// ReadDigests reads an application's digests of days (as ReadDigest, each
// day starting where p says) in one round trip, in the order of days.
func ReadDigests(ctx context.Context, rdb redis.UniversalClient, keys daylog.Keys, p streak.Policy, appID string,
	days []string, log zerolog.Logger) ([]*Digest, error) {
	starts := make([]time.Time, len(days))
	for i, day := range days {
		var err error
		if starts[i], err = p.DayStart(day); err != nil {
			return nil, err
		}
	}
	failing := make([]*redis.MapStringStringCmd, len(days))
	deleted := make([]*redis.MapStringStringCmd, len(days))
	_, err := rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, day := range days {
			failing[i] = pl.HGetAll(ctx, keys.Failing(day, appID))
			deleted[i] = pl.HGetAll(ctx, keys.Deleted(day, appID))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read day records of %s for %d days: %w", appID, len(days), err)
	}
	out := make([]*Digest, len(days))
	for i, day := range days {
		out[i] = digestOf(day, starts[i], p, failing[i].Val(), deleted[i].Val(), log)
	}
	return out, nil
}

// digestOf makes a day's digest from its failing and deleted records.
func digestOf(day string, start time.Time, p streak.Policy, failing, deleted map[string]string, log zerolog.Logger) *Digest {
	d := &Digest{Day: day, Start: start, End: start.Add(24 * time.Hour), DeleteAfter: p.After()}
	d.Deleted = decodeEntries(nil, deleted, nil, log)
	d.Failing = decodeEntries(nil, failing, deleted, log)
	slices.SortFunc(d.Deleted, func(a, b *daylog.Entry) int {
		return cmp.Or(a.Deleted.Compare(b.Deleted), cmp.Compare(a.WebhookID, b.WebhookID))
	})
	slices.SortFunc(d.Failing, func(a, b *daylog.Entry) int {
		return cmp.Or(cmp.Compare(a.Address, b.Address), cmp.Compare(a.WebhookID, b.WebhookID))
	})
	if n := len(d.Deleted) - MaxListed; n > 0 {
		d.Deleted, d.DeletedMore = d.Deleted[:MaxListed], n
	}
	if n := len(d.Failing) - MaxListed; n > 0 {
		d.Failing, d.FailingMore = d.Failing[:MaxListed], n
	}
	return d
}

// ReadDeleted reads an application's webhooks deleted on the mail days
// days in one round trip (a pipeline), newest deletion first: the
// developer portal lists them without the rest of each day's digest.
// Unreadable entries are logged and skipped.
func ReadDeleted(ctx context.Context, rdb redis.UniversalClient, keys daylog.Keys, appID string, days []string,
	log zerolog.Logger) ([]*daylog.Entry, error) {
	cmds := make([]*redis.MapStringStringCmd, len(days))
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, day := range days {
			cmds[i] = p.HGetAll(ctx, keys.Deleted(day, appID))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read the deletions of %s of %d days: %w", appID, len(days), err)
	}
	var out []*daylog.Entry
	for _, c := range cmds {
		out = decodeEntries(out, c.Val(), nil, log)
	}
	slices.SortFunc(out, func(a, b *daylog.Entry) int {
		return cmp.Or(b.Deleted.Compare(a.Deleted), cmp.Compare(a.WebhookID, b.WebhookID))
	})
	return out, nil
}

// decodeEntries appends to dst the entries of a day hash (webhook id →
// msgpack Entry) whose webhook is not a field of skip; unreadable ones are
// logged and left out.
func decodeEntries(dst []*daylog.Entry, raw, skip map[string]string, log zerolog.Logger) []*daylog.Entry {
	for id, b := range raw {
		if _, ok := skip[id]; ok {
			continue
		}
		e, err := daylog.Decode([]byte(b))
		if err != nil {
			log.Warn().Err(err).Str("webhook_id", id).Msg("skipping unreadable day entry")
			continue
		}
		dst = append(dst, e)
	}
	return dst
}
