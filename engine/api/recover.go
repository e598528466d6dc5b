package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/listoffsets"
	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/shard"
)

// RecoveryOptions configure recovery from Kafka by time. Without Brokers
// or Redis the recovery endpoints answer 503.
type RecoveryOptions struct {
	Brokers []string
	Topic   string // the events topic
	// Partitioner, when every producer uses the same one, names it
	// ("murmur2" or "crc32"): a recovery then reads only the account's
	// partition. Empty reads every partition.
	Partitioner string
	// Max is the most events one recovery may re-deliver (10000).
	Max       int
	Isolation kafkaio.Isolation
	// Redis and Prefix hold the retry queues (the recovered deliveries)
	// and each recovery's state.
	Redis  redis.UniversalClient
	Prefix string
	// StateTTL is how long a recovery's state is kept after it was last
	// written (7 days).
	StateTTL time.Duration
}

// The states of a recovery.
const (
	recRunning   = "running"
	recDone      = "done"
	recFailed    = "failed"
	recCancelled = "cancelled"
)

// RecoveryView is a recovery as the API shows it.
type RecoveryView struct {
	ID        string `json:"id"`
	WebhookID string `json:"webhook_id"`
	Since     string `json:"since"` // RFC 3339, UTC
	Until     string `json:"until"`
	State     string `json:"state"`
	Scanned   int64  `json:"scanned"` // records read from the window
	Matched   int64  `json:"matched"` // of them, the webhook's account and event
	Queued    int64  `json:"queued"`  // of them, in the retry queue
	Error     string `json:"error,omitempty"`
}

// recoveries runs this process's recoveries: one owner goroutine each,
// stopped with the API.
type recoveries struct {
	a      *API
	mu     sync.Mutex
	life   context.Context
	end    context.CancelFunc
	wg     sync.WaitGroup
	cancel map[string]context.CancelFunc
}

func newRecoveries(a *API) *recoveries {
	life, end := context.WithCancel(context.Background())
	return &recoveries{a: a, life: life, end: end, cancel: map[string]context.CancelFunc{}}
}

func (r *recoveries) stop() {
	r.end()
	r.wg.Wait()
}

func (o *RecoveryOptions) enabled() bool { return len(o.Brokers) > 0 && o.Redis != nil }

func (o *RecoveryOptions) max() int {
	if o.Max <= 0 {
		return 10000
	}
	return o.Max
}

func (o *RecoveryOptions) stateKey(id string) string    { return o.Prefix + "recovery:" + id }
func (o *RecoveryOptions) lockKey(hookID string) string { return o.Prefix + "recovering:" + hookID }

func (o *RecoveryOptions) ttl() time.Duration {
	if o.StateTTL <= 0 {
		return 7 * 24 * time.Hour
	}
	return o.StateTTL
}

// lockTTL is how long a recovery's claim on its webhook outlives its
// owner's last refresh (a crashed API process frees the webhook).
const lockTTL = time.Minute

func recoveryUnavailable() *apiError {
	return &apiError{fasthttp.StatusServiceUnavailable, "recovery_unavailable", "recovery is not configured on this server, or Kafka or Redis did not answer; try again"}
}

// span is the part of one partition a recovery reads: offsets [from, to).
type span struct {
	partition int
	from, to  int64
}

// plan is what a recovery reads and for which webhook.
type plan struct {
	id           string
	hook         *registry.Webhook
	since, until time.Time
	spans        []span
}

// startRecovery: POST /v1/webhooks/{id}/recover (application).
func (a *API) startRecovery(ctx *fasthttp.RequestCtx, c caller) *apiError {
	w, e := a.ownWebhook(ctx, c)
	if e != nil {
		return e
	}
	var req struct {
		Since *string `json:"since"`
		Until *string `json:"until"`
	}
	if e := decodeBody(ctx, &req); e != nil {
		return e
	}
	ro := &a.o.Recovery
	now := a.o.Now()
	if req.Since == nil {
		return missing("since")
	}
	since, err := time.Parse(time.RFC3339, *req.Since)
	if err != nil {
		return invalid("invalid_field", "since must be an RFC 3339 time such as 2026-03-04T05:06:07Z")
	}
	if since.After(now) {
		return invalid("invalid_field", "since is in the future: give a time before now ("+responseTime(now)+")")
	}
	until := now
	if req.Until != nil {
		if until, err = time.Parse(time.RFC3339, *req.Until); err != nil {
			return invalid("invalid_field", "until must be an RFC 3339 time such as 2026-03-04T05:06:07Z, or left out for now")
		}
		if until.Before(since) {
			return invalid("invalid_field", "until is before since: give an until after "+responseTime(since))
		}
		if until.After(now) {
			until = now // the end at the time of the request
		}
	}
	if !ro.enabled() {
		return recoveryUnavailable()
	}
	// Planning and counting answer within the request; shutdown ends them.
	kctx, cancel := context.WithTimeout(a.recs.life, planTimeout)
	defer cancel()
	rdb := ro.Redis
	// A cheap look first, so a second request does not read Kafka; SETNX
	// below decides.
	if running, err := rdb.Get(kctx, ro.lockKey(w.ID)).Result(); err == nil {
		return errRunning(running)
	}
	p := &plan{hook: w, since: since, until: until}
	if e := a.planSpans(kctx, p); e != nil {
		return e
	}
	if e := a.checkCount(kctx, p); e != nil {
		return e
	}
	p.id = "rec_" + randomHex(12)
	ok, err := rdb.SetNX(kctx, ro.lockKey(w.ID), p.id, lockTTL).Result()
	if err != nil {
		a.o.Log.Warn().Err(err).Msg("cannot claim a recovery")
		return recoveryUnavailable()
	}
	if !ok {
		running, _ := rdb.Get(kctx, ro.lockKey(w.ID)).Result()
		return errRunning(running)
	}
	v := RecoveryView{ID: p.id, WebhookID: w.ID, Since: responseTime(since), Until: responseTime(until), State: recRunning}
	if err := a.writeState(kctx, p, c.app.ID, v); err != nil {
		_ = rdb.Del(kctx, ro.lockKey(w.ID)).Err()
		a.o.Log.Warn().Err(err).Msg("cannot store a recovery")
		return recoveryUnavailable()
	}
	if !a.recs.launch(p) {
		cctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		defer cancel()
		rdb.HSet(cctx, ro.stateKey(p.id), "state", recFailed, "error", "the API process was stopping; start another")
		releaseLock.Run(cctx, rdb, []string{ro.lockKey(w.ID)}, p.id)
		return &apiError{fasthttp.StatusServiceUnavailable, "recovery_unavailable", "the server is shutting down; try another"}
	}
	a.o.Log.Info().Str("recovery", p.id).Str("webhook_id", w.ID).Time("since", since).Time("until", until).
		Int("partitions", len(p.spans)).Msg("recovery started")
	writeJSON(ctx, fasthttp.StatusAccepted, map[string]RecoveryView{"recovery": v})
	return nil
}

// planTimeout bounds a recovery request: finding the offsets and, for a
// window of more records than --recover-max, counting its events.
const planTimeout = 20 * time.Second

func errRunning(id string) *apiError {
	return &apiError{fasthttp.StatusConflict, "recovery_running",
		fmt.Sprintf("recovery %s of this webhook is still running: wait for it to end or cancel it (DELETE /v1/recoveries/%s)", id, id)}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (a *API) writeState(ctx context.Context, p *plan, appID string, v RecoveryView) error {
	ro := &a.o.Recovery
	key := ro.stateKey(p.id)
	_, err := ro.Redis.TxPipelined(ctx, func(pl redis.Pipeliner) error {
		pl.HSet(ctx, key, "id", v.ID, "webhook_id", v.WebhookID, "app_id", appID, "since", v.Since, "until", v.Until,
			"state", v.State, "scanned", 0, "matched", 0, "queued", 0)
		pl.Expire(ctx, key, ro.ttl())
		return nil
	})
	return err
}

// planSpans finds, for each partition the recovery reads, the offsets of
// since and until, and refuses a since older than the topic keeps.
func (a *API) planSpans(ctx context.Context, p *plan) *apiError {
	ro := &a.o.Recovery
	client := &kafka.Client{Addr: kafka.TCP(ro.Brokers...), Timeout: 10 * time.Second}
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{ro.Topic}})
	if err != nil || len(meta.Topics) != 1 || meta.Topics[0].Error != nil {
		a.o.Log.Warn().Err(err).Str("topic", ro.Topic).Msg("cannot read the events topic's partitions")
		return recoveryUnavailable()
	}
	var parts []int
	for _, pt := range meta.Topics[0].Partitions {
		parts = append(parts, pt.ID)
	}
	if len(parts) == 0 {
		return recoveryUnavailable()
	}
	if b := balancer(ro.Partitioner); b != nil {
		slices.Sort(parts)
		parts = []int{b.Balance(kafka.Message{Key: []byte(p.hook.AccountID)}, parts...)}
	}
	for _, part := range parts {
		first, _, err := listOffset(ctx, client, ro, part, kafka.FirstOffset)
		if err != nil {
			return a.kafkaTrouble(err)
		}
		end, _, err := listOffset(ctx, client, ro, part, kafka.LastOffset)
		if err != nil {
			return a.kafkaTrouble(err)
		}
		from, _, err := listOffset(ctx, client, ro, part, p.since.UnixMilli())
		if err != nil {
			return a.kafkaTrouble(err)
		}
		if from < 0 {
			from = end // nothing at or after since
		}
		if first > 0 && from == first && from < end {
			// Retention removed records before first; some may have
			// been in the window. The earliest still there says how
			// far back a recovery can go.
			earliest, err := a.recordTime(ctx, part, first, end)
			if err != nil {
				return a.kafkaTrouble(err)
			}
			if p.since.Before(earliest) {
				return invalid("since_too_old", fmt.Sprintf(
					"since is older than the events topic keeps: the earliest event still in partition %d is from %s; give a since at or after it",
					part, responseTime(earliest.Add(time.Second-1).Truncate(time.Second))))
			}
		}
		to, _, err := listOffset(ctx, client, ro, part, p.until.UnixMilli()+1)
		if err != nil {
			return a.kafkaTrouble(err)
		}
		if to < 0 || to > end {
			to = end
		}
		if to > from {
			p.spans = append(p.spans, span{partition: part, from: from, to: to})
		}
	}
	return nil
}

func (a *API) kafkaTrouble(err error) *apiError {
	a.o.Log.Warn().Err(err).Msg("cannot plan a recovery")
	return recoveryUnavailable()
}

// balancer is the producers' partitioner, nil when none is declared.
func balancer(name string) kafka.Balancer {
	switch name {
	case "murmur2":
		return &kafka.Murmur2Balancer{}
	case "crc32":
		return &kafka.CRC32Balancer{}
	}
	return nil
}

// ValidPartitioner reports whether name is a partitioner recovery knows
// ("" for none declared).
func ValidPartitioner(name string) bool { return name == "" || balancer(name) != nil }

// listOffset asks the partition's leader for one offset: the first, the
// end (kafka.FirstOffset, kafka.LastOffset), or the first with a time at
// or after ts (Unix ms; -1 when there is none). One request per question:
// a ListOffsets request names each partition once.
func listOffset(ctx context.Context, client *kafka.Client, ro *RecoveryOptions, partition int, ts int64) (int64, int64, error) {
	isolation := int8(0)
	if ro.Isolation == kafkaio.ReadCommitted {
		isolation = 1
	}
	transport := client.Transport
	if transport == nil {
		transport = kafka.DefaultTransport
	}
	res, err := transport.RoundTrip(ctx, client.Addr, &listoffsets.Request{
		ReplicaID: -1, IsolationLevel: isolation,
		Topics: []listoffsets.RequestTopic{{Topic: ro.Topic, Partitions: []listoffsets.RequestPartition{
			{Partition: int32(partition), CurrentLeaderEpoch: -1, Timestamp: ts},
		}}},
	})
	if err != nil {
		return 0, 0, fmt.Errorf("cannot list offsets of %s/%d: %w", ro.Topic, partition, err)
	}
	for _, t := range res.(*listoffsets.Response).Topics {
		for _, pt := range t.Partitions {
			if t.Topic != ro.Topic || int(pt.Partition) != partition {
				continue
			}
			if pt.ErrorCode != 0 {
				return 0, 0, fmt.Errorf("cannot list offsets of %s/%d: %w", ro.Topic, partition, kafka.Error(pt.ErrorCode))
			}
			return pt.Offset, pt.Timestamp, nil
		}
	}
	return 0, 0, fmt.Errorf("cannot list offsets of %s/%d: not in the broker's answer", ro.Topic, partition)
}

// recordTime returns the time of the first record in [offset, end), or
// the zero time if there is none.
func (a *API) recordTime(ctx context.Context, partition int, offset, end int64) (time.Time, error) {
	r := a.reader(partition, offset)
	defer r.Close()
	for r.Offset() < end {
		recs, err := r.Fetch(ctx)
		if err != nil {
			return time.Time{}, err
		}
		for _, rec := range recs {
			if !rec.Skip && rec.Offset < end {
				return rec.Time, nil
			}
		}
	}
	return time.Time{}, nil
}

func (a *API) reader(partition int, offset int64) *kafkaio.PartitionReader {
	ro := &a.o.Recovery
	return kafkaio.NewPartitionReader(kafkaio.PartitionConfig{
		Brokers: ro.Brokers, Topic: ro.Topic, Partition: partition, Isolation: ro.Isolation,
	}, offset)
}

// errOverMax stops a count past the limit.
var errOverMax = errors.New("over the limit")

// checkCount refuses a window with more matching events than the limit.
// When the window holds no more records than the limit, nothing is read;
// otherwise the window is read once to count (a recovery too large to
// count within the request's time is refused too).
func (a *API) checkCount(ctx context.Context, p *plan) *apiError {
	limit := int64(a.o.Recovery.max())
	var records int64
	for _, s := range p.spans {
		records += s.to - s.from
	}
	if records <= limit {
		return nil
	}
	var matched int64
	err := a.scan(ctx, p, func(partition int, rec *kafkaio.Record, ev *contract.Event) error {
		matched++
		if matched > limit {
			return errOverMax
		}
		return nil
	}, nil)
	switch {
	case errors.Is(err, errOverMax):
		return invalid("too_many_events", fmt.Sprintf(
			"more than %d events of this webhook are in the window (the server's --recover-max): recover a shorter window, several in turn", limit))
	case ctx.Err() != nil:
		return invalid("too_many_events", fmt.Sprintf(
			"the window holds more than %d records and could not be counted in time: recover a shorter window", limit))
	case err != nil:
		return a.kafkaTrouble(err)
	}
	return nil
}

// scan reads p's spans, calling match for each event of the webhook in the
// window, and after each fetch progress with the records read so far. An
// error of either stops it.
func (a *API) scan(ctx context.Context, p *plan, match func(partition int, rec *kafkaio.Record, ev *contract.Event) error,
	progress func(scanned int64) error,
) error {
	var scanned int64
	sinceMs, untilMs := p.since.UnixMilli(), p.until.UnixMilli()
	for _, s := range p.spans {
		r := a.reader(s.partition, s.from)
		err := func() error {
			defer r.Close()
			for r.Offset() < s.to {
				recs, err := r.Fetch(ctx)
				if err != nil {
					return err
				}
				for i := range recs {
					rec := &recs[i]
					if rec.Offset >= s.to {
						break
					}
					if rec.Skip {
						continue
					}
					scanned++
					if ms := rec.Time.UnixMilli(); ms < sinceMs || ms > untilMs {
						continue
					}
					ev, err := contract.DecodeEvent(rec.Value, rec.Key, rec.Time.Unix(), a.o.Catalog)
					if err != nil || ev.AccountID != p.hook.AccountID || ev.Event != p.hook.Event {
						continue
					}
					if err := match(s.partition, rec, &ev); err != nil {
						return err
					}
				}
				if progress != nil {
					if err := progress(scanned); err != nil {
						return err
					}
				}
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

// launch starts p's owner goroutine; false once the API is stopping.
func (r *recoveries) launch(p *plan) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.life.Err() != nil {
		return false
	}
	ctx, cancel := context.WithCancel(r.life)
	r.cancel[p.id] = cancel
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() {
			r.mu.Lock()
			delete(r.cancel, p.id)
			r.mu.Unlock()
			cancel()
		}()
		r.a.runRecovery(ctx, p)
	}()
	return true
}

// cancelLocal cancels a recovery this process owns.
func (r *recoveries) cancelLocal(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.cancel[id]; c != nil {
		c()
	}
}

// errCancelled: a DELETE, maybe on another API process, asked to stop.
var errCancelled = errors.New("cancelled")

// scheduleBatch is the most deliveries one Schedule call writes.
const scheduleBatch = 256

// runRecovery reads the window and schedules each matching event into its
// partition's retry queue, due now, with the delivery id of the original;
// the dispatchers' retry pollers deliver them.
func (a *API) runRecovery(ctx context.Context, p *plan) {
	ro := &a.o.Recovery
	rdb := ro.Redis
	key := ro.stateKey(p.id)
	log := a.o.Log.With().Str("recovery", p.id).Str("webhook_id", p.hook.ID).Logger()
	store := shard.NewStore(rdb, ro.Prefix)
	var matched, queued int64
	var batch []shard.Entry
	batchPart := -1
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		q := shard.NewQueue(rdb, ro.Prefix, ro.Topic, batchPart)
		if err := store.Register(ctx, ro.Topic, batchPart); err != nil {
			return err
		}
		if err := q.Schedule(ctx, batch); err != nil {
			return err
		}
		queued += int64(len(batch))
		batch = batch[:0]
		return nil
	}
	lastCheck := time.Now()
	var read int64
	err := a.scan(ctx, p, func(partition int, rec *kafkaio.Record, ev *contract.Event) error {
		if partition != batchPart || len(batch) >= scheduleBatch {
			if err := flush(); err != nil {
				return err
			}
			batchPart = partition
		}
		matched++
		now := a.o.Now()
		batch = append(batch, shard.Entry{Due: now, Rec: &shard.Record{
			ID:        contract.DeliveryID(ro.Topic, int32(partition), rec.Offset, p.hook.ID),
			WebhookID: p.hook.ID, AppID: p.hook.AppID, AccountID: ev.AccountID, Event: ev.Event,
			Body:         contract.AppendBody(nil, ev, a.o.ResourceBase, a.o.Catalog),
			FirstAttempt: now, LastAttempt: now, LastError: "recovered from Kafka by " + p.id,
			Topic: ro.Topic, Partition: int32(partition), Offset: rec.Offset,
		}})
		return nil
	}, func(scanned int64) error {
		read = scanned
		if err := flush(); err != nil {
			return err
		}
		if time.Since(lastCheck) < 200*time.Millisecond {
			return nil
		}
		lastCheck = time.Now()
		return a.recoveryProgress(ctx, p, scanned, matched, queued)
	})
	if err == nil {
		err = flush()
	}
	state, msg := recDone, ""
	switch {
	case errors.Is(err, errCancelled), err != nil && ctx.Err() != nil && a.recs.life.Err() == nil:
		state = recCancelled
	case err != nil && a.recs.life.Err() != nil:
		state, msg = recFailed, "the API process stopped before the recovery ended; start another (deliveries already queued are not duplicated)"
	case err != nil:
		state, msg = recFailed, err.Error()
	}
	fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if cur, _ := rdb.HGet(fctx, key, "state").Result(); cur == recCancelled {
		state, msg = recCancelled, ""
	}
	fields := []any{"state", state, "scanned", read, "matched", matched, "queued", queued}
	if msg != "" {
		fields = append(fields, "error", msg)
	}
	if _, err := rdb.TxPipelined(fctx, func(pl redis.Pipeliner) error {
		pl.HSet(fctx, key, fields...)
		pl.Expire(fctx, key, ro.ttl())
		return nil
	}); err != nil {
		log.Warn().Err(err).Msg("cannot store a recovery's end")
	}
	releaseLock.Run(fctx, rdb, []string{ro.lockKey(p.hook.ID)}, p.id)
	log.Info().Str("state", state).Int64("matched", matched).Int64("queued", queued).Str("error", msg).Msg("recovery ended")
}

// recoveryProgress writes the counts, keeps the webhook's claim, and
// reports errCancelled once a DELETE asked to stop.
func (a *API) recoveryProgress(ctx context.Context, p *plan, scanned, matched, queued int64) error {
	ro := &a.o.Recovery
	key := ro.stateKey(p.id)
	var state *redis.StringCmd
	// Not a transaction: the state and the claim are two keys, in two
	// slots of a Redis Cluster.
	_, err := ro.Redis.Pipelined(ctx, func(pl redis.Pipeliner) error {
		pl.HSet(ctx, key, "scanned", scanned, "matched", matched, "queued", queued)
		pl.Expire(ctx, key, ro.ttl())
		pl.Expire(ctx, ro.lockKey(p.hook.ID), lockTTL)
		state = pl.HGet(ctx, key, "state")
		return nil
	})
	if err != nil {
		return err
	}
	if state.Val() == recCancelled {
		return errCancelled
	}
	return nil
}

// releaseLock frees a webhook's claim if it is still the recovery's.
var releaseLock = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// ownRecovery reads the recovery named in the path, if the caller's.
func (a *API) ownRecovery(ctx *fasthttp.RequestCtx, c caller) (RecoveryView, *apiError) {
	id, _ := pathID(string(ctx.Path()), "/v1/recoveries/")
	notFound := &apiError{fasthttp.StatusNotFound, "not_found", fmt.Sprintf("recovery %.100q not found", id)}
	ro := &a.o.Recovery
	if !ro.enabled() {
		return RecoveryView{}, recoveryUnavailable()
	}
	rctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	m, err := ro.Redis.HGetAll(rctx, ro.stateKey(id)).Result()
	if err != nil {
		a.o.Log.Warn().Err(err).Msg("cannot read a recovery")
		return RecoveryView{}, recoveryUnavailable()
	}
	if len(m) == 0 || m["app_id"] != c.app.ID {
		return RecoveryView{}, notFound
	}
	n := func(k string) int64 { v, _ := strconv.ParseInt(m[k], 10, 64); return v }
	return RecoveryView{ID: m["id"], WebhookID: m["webhook_id"], Since: m["since"], Until: m["until"], State: m["state"],
		Scanned: n("scanned"), Matched: n("matched"), Queued: n("queued"), Error: m["error"]}, nil
}

// getRecovery: GET /v1/recoveries/{id} (application).
func (a *API) getRecovery(ctx *fasthttp.RequestCtx, c caller) *apiError {
	v, e := a.ownRecovery(ctx, c)
	if e != nil {
		return e
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]RecoveryView{"recovery": v})
	return nil
}

// cancelRecovery: DELETE /v1/recoveries/{id} (application). A running
// recovery stops after its current batch, on whichever API process owns
// it; what it queued stays queued. An ended one is answered as it is.
func (a *API) cancelRecovery(ctx *fasthttp.RequestCtx, c caller) *apiError {
	v, e := a.ownRecovery(ctx, c)
	if e != nil {
		return e
	}
	if v.State == recRunning {
		ro := &a.o.Recovery
		rctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		defer cancel()
		if err := ro.Redis.HSet(rctx, ro.stateKey(v.ID), "state", recCancelled).Err(); err != nil {
			return recoveryUnavailable()
		}
		a.recs.cancelLocal(v.ID)
		v.State = recCancelled
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]RecoveryView{"recovery": v})
	return nil
}
