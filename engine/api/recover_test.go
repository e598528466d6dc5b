package api

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/dispatch"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
)

const eventsTopic = "geckohook.events"

// recoverEnv is the API with recovery on the embedded Kafka, a real
// dispatcher delivering the events topic and the recovered retries, and a
// receiver that answers 503 while down is set.
type recoverEnv struct {
	*env
	broker string
	recv   *loadtest.Receiver
	down   atomic.Bool
	writer *kafka.Writer
}

func startRecoverEnv(t *testing.T, tune func(*RecoveryOptions)) *recoverEnv {
	t.Helper()
	k := testenv.Kafka(t, 4)
	re := &recoverEnv{broker: k.Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kafkaio.EnsureTopics(ctx, []string{re.broker},
		kafkaio.Topic{Name: eventsTopic, Partitions: 4}, kafkaio.Topic{Name: eventsTopic + ".dlq", Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	recv, err := loadtest.NewReceiver(func(string, int) int {
		if re.down.Load() {
			return 503
		}
		return 200
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Close() })
	re.recv = recv
	policy := netguard.Policy{AllowPrivate: true, AllowHTTP: true}
	re.env = start(t, func(o *Options) {
		o.Policy = policy
		o.Now = time.Now
		o.Recovery = RecoveryOptions{Brokers: []string{re.broker}, Topic: eventsTopic, Max: 100}
		if tune != nil {
			tune(&o.Recovery)
		}
	})
	re.writer = kafkaio.NewWriter([]string{re.broker}, eventsTopic)
	t.Cleanup(func() { _ = re.writer.Close() })

	// A failed delivery is dead at once (no retries): what the receiver
	// missed is only delivered again by a recovery.
	d := dispatch.New(dispatch.Options{
		Brokers: []string{re.broker}, Registry: re.reg, Catalog: catalog.Default(), Redis: re.rdb,
		Sender:  sender.New(sender.Options{Policy: policy, Timeout: 5 * time.Second}),
		Workers: 8, MaxRetries: 0, CommitEvery: 50 * time.Millisecond, PollEvery: 50 * time.Millisecond,
		SessionTimeout: 6 * time.Second, DrainTimeout: 3 * time.Second,
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	dctx, stop := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := d.Run(dctx); err != nil {
			t.Errorf("dispatcher: %v", err)
		}
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-stopped:
		case <-time.After(30 * time.Second):
			t.Error("dispatcher did not stop")
		}
	})
	return re
}

// produce writes one event with the record time at.
func (re *recoverEnv) produce(account, event string, objectID int64, at time.Time) {
	re.t.Helper()
	ev := contract.Event{AccountID: account, Event: event, ObjectID: objectID, Timestamp: at.Unix()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := re.writer.WriteMessages(ctx, kafka.Message{Key: []byte(account), Value: contract.AppendValue(nil, &ev), Time: at}); err != nil {
		re.t.Fatal(err)
	}
}

func (re *recoverEnv) on(path string) []loadtest.Received {
	var out []loadtest.Received
	for _, r := range re.recv.Received() {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

func (re *recoverEnv) waitOn(path string, n int) []loadtest.Received {
	re.t.Helper()
	testenv.WaitFor(re.t, 30*time.Second, func() error {
		if got := len(re.on(path)); got < n {
			return fmt.Errorf("%s received %d of %d", path, got, n)
		}
		return nil
	})
	return re.on(path)
}

type recoveryAnswer struct {
	Recovery RecoveryView `json:"recovery"`
}

func (re *recoverEnv) recovery(token, id string) RecoveryView {
	re.t.Helper()
	r := re.do("GET", "/v1/recoveries/"+id, token, "")
	var out recoveryAnswer
	if r.status != 200 || json.Unmarshal(r.raw, &out) != nil {
		re.t.Fatalf("GET recovery: %d %s", r.status, r.raw)
	}
	return out.Recovery
}

func rfc(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// A receiver is down for a while, then back; a recovery over the window
// it was down delivers exactly what it missed, once more, with the ids
// and signatures of the first attempts.
func TestRecoveryRedeliversAMissedWindow(t *testing.T) {
	re := startRecoverEnv(t, nil)
	app := re.createApp("shop")
	other := re.createApp("other")
	w := re.createWebhook(app.Token, "acc-1", "order.create", re.recv.URL+"/shop")
	re.recv.Expect("/shop", app.Secret)
	// Same account and event, another application: not recovered.
	wo := re.createWebhook(other.Token, "acc-1", "order.create", re.recv.URL+"/other")
	re.recv.Expect("/other", other.Secret)
	wp := re.createWebhook(app.Token, "acc-1", "product.create", re.recv.URL+"/product")
	w2 := re.createWebhook(app.Token, "acc-2", "order.create", re.recv.URL+"/acc2")

	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	re.produce("acc-1", "order.create", 1, base) // before the window, delivered
	re.waitOn("/shop", 1)
	re.waitOn("/other", 1)

	re.down.Store(true)
	missed := []int64{2, 3, 4}
	for i, obj := range missed {
		re.produce("acc-1", "order.create", obj, base.Add(time.Duration(10+i)*time.Minute))
	}
	re.produce("acc-1", "product.create", 5, base.Add(14*time.Minute))
	re.produce("acc-2", "order.create", 6, base.Add(15*time.Minute))
	first := re.waitOn("/shop", 4)[1:]
	re.waitOn("/product", 1)
	re.waitOn("/acc2", 1)
	re.waitOn("/other", 4)
	re.down.Store(false)
	re.produce("acc-1", "order.create", 7, base.Add(40*time.Minute)) // after the window, delivered
	re.waitOn("/shop", 5)
	re.waitOn("/other", 5)
	before := len(re.recv.Received())

	// Refusals first: they start nothing.
	hook := "/v1/webhooks/" + w.ID + "/recover"
	re.expectError(re.do("POST", hook, app.Token, `{}`), 422, "missing_field", "since")
	re.expectError(re.do("POST", hook, app.Token, `{"since":"yesterday"}`), 422, "invalid_field", "RFC 3339")
	re.expectError(re.do("POST", hook, app.Token, `{"since":"`+rfc(time.Now().Add(time.Hour))+`"}`), 422, "invalid_field", "future")
	re.expectError(re.do("POST", hook, app.Token, `{"since":"`+rfc(base)+`","until":"`+rfc(base.Add(-time.Minute))+`"}`),
		422, "invalid_field", "until is before since")
	re.expectError(re.do("POST", hook, app.Token, `{"since":"`+rfc(base)+`","until":"x"}`), 422, "invalid_field", "until")
	re.expectError(re.do("POST", "/v1/webhooks/"+wo.ID+"/recover", app.Token, `{"since":"`+rfc(base)+`"}`), 404, "not_found", "")
	re.expectError(re.do("POST", hook, app.Token, `{"since":`), 400, "invalid_json", "")

	body := `{"since":"` + rfc(base.Add(5*time.Minute)) + `","until":"` + rfc(base.Add(20*time.Minute)) + `"}`
	// While a recovery of the webhook runs, another is refused.
	lock := "gh:recovering:" + w.ID
	if err := re.rdb.Set(context.Background(), lock, "rec_other", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	re.expectError(re.do("POST", hook, app.Token, body), 409, "recovery_running", "rec_other")
	re.rdb.Del(context.Background(), lock)

	r := re.do("POST", hook, app.Token, body)
	var started recoveryAnswer
	if r.status != 202 || json.Unmarshal(r.raw, &started) != nil {
		t.Fatalf("recover: %d %s", r.status, r.raw)
	}
	v := started.Recovery
	if !strings.HasPrefix(v.ID, "rec_") || v.WebhookID != w.ID || v.State != "running" ||
		v.Since != rfc(base.Add(5*time.Minute)) || v.Until != rfc(base.Add(20*time.Minute)) {
		t.Fatalf("started %+v", v)
	}
	testenv.WaitFor(t, 30*time.Second, func() error {
		if v = re.recovery(app.Token, v.ID); v.State != "done" {
			return fmt.Errorf("recovery %+v", v)
		}
		return nil
	})
	// The window holds the 5 events produced while the receiver was down.
	if v.Matched != 3 || v.Queued != 3 || v.Scanned != 5 || v.Error != "" {
		t.Fatalf("done recovery %+v, want 5 scanned, 3 matched and queued", v)
	}
	again := re.waitOn("/shop", 8)[5:]
	want := map[string]loadtest.Received{}
	for _, f := range first {
		if f.Status != 503 {
			t.Fatalf("a first attempt in the window was answered %d", f.Status)
		}
		want[f.DeliveryID] = f
	}
	for _, a := range again {
		f, ok := want[a.DeliveryID]
		if !ok {
			t.Fatalf("recovered a delivery %s that was not missed (body %s)", a.DeliveryID, a.Body)
		}
		delete(want, a.DeliveryID)
		if !a.ValidSig || string(a.Body) != string(f.Body) || a.Status != 200 {
			t.Fatalf("recovered %s: signature valid %v, body %s (first %s), status %d", a.DeliveryID, a.ValidSig, a.Body, f.Body, a.Status)
		}
	}
	if len(want) != 0 {
		t.Fatalf("missed deliveries not recovered: %v", want)
	}
	// Nothing else: not the other application's, not another account's or
	// event's, not the events outside the window.
	if got := len(re.recv.Received()); got != before+3 {
		t.Fatalf("%d requests after the recovery, want 3", got-before)
	}
	_, _ = wp, w2

	// A second recovery of the same window queues again; the receiver
	// de-duplicates by the ids, which are the same.
	re.expectError(re.do("GET", "/v1/recoveries/"+v.ID, other.Token, ""), 404, "not_found", "")
	re.expectError(re.do("GET", "/v1/recoveries/rec_none", app.Token, ""), 404, "not_found", "")
	r = re.do("DELETE", "/v1/recoveries/"+v.ID, app.Token, "")
	var ended recoveryAnswer
	if r.status != 200 || json.Unmarshal(r.raw, &ended) != nil || ended.Recovery.State != "done" {
		t.Fatalf("DELETE an ended recovery: %d %s", r.status, r.raw)
	}
}

func TestRecoveryLimitAndCancel(t *testing.T) {
	re := startRecoverEnv(t, func(o *RecoveryOptions) { o.Max = 2 })
	app := re.createApp("shop")
	w := re.createWebhook(app.Token, "acc-1", "order.create", re.recv.URL+"/shop")
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i := int64(0); i < 3; i++ {
		re.produce("acc-1", "order.create", i, base.Add(time.Duration(i)*time.Minute))
	}
	re.waitOn("/shop", 3)
	hook := "/v1/webhooks/" + w.ID + "/recover"
	re.expectError(re.do("POST", hook, app.Token, `{"since":"`+rfc(base)+`"}`), 422, "too_many_events", "more than 2")
	// Two fit; other records in the window do not count against it.
	re.produce("acc-9", "order.create", 9, base.Add(90*time.Second))
	r := re.do("POST", hook, app.Token, `{"since":"`+rfc(base.Add(time.Minute))+`"}`)
	if r.status != 202 {
		t.Fatalf("recover 2 events: %d %s", r.status, r.raw)
	}

	// A DELETE marks a running recovery cancelled for its owner, on
	// whatever process: here a state written as another process would.
	ctx := context.Background()
	re.rdb.HSet(ctx, "gh:recovery:rec_x", "id", "rec_x", "webhook_id", w.ID, "app_id", app.ID,
		"since", rfc(base), "until", rfc(base), "state", "running", "scanned", 1, "matched", 0, "queued", 0)
	r = re.do("DELETE", "/v1/recoveries/rec_x", app.Token, "")
	var out recoveryAnswer
	if r.status != 200 || json.Unmarshal(r.raw, &out) != nil || out.Recovery.State != "cancelled" {
		t.Fatalf("DELETE: %d %s", r.status, r.raw)
	}
	if got := re.recovery(app.Token, "rec_x").State; got != "cancelled" {
		t.Fatalf("state after DELETE %q", got)
	}
}

// With the producers' partitioner declared, only the account's partition
// is read; a since older than the partition keeps is refused, naming the
// earliest time still there.
func TestRecoveryRetentionAndPartitioner(t *testing.T) {
	re := startRecoverEnv(t, func(o *RecoveryOptions) { o.Partitioner = "murmur2" })
	app := re.createApp("shop")
	w := re.createWebhook(app.Token, "acc-1", "order.create", re.recv.URL+"/shop")
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i := int64(0); i < 3; i++ {
		re.produce("acc-1", "order.create", i, base.Add(time.Duration(i)*time.Minute))
	}
	re.produce("acc-2", "order.create", 9, base) // another partition: not read
	re.waitOn("/shop", 3)
	part := (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte("acc-1")}, 0, 1, 2, 3)
	if (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte("acc-2")}, 0, 1, 2, 3) == part {
		t.Fatal("acc-1 and acc-2 share a partition: pick other accounts")
	}
	// Retention removes the first record of acc-1's partition.
	cl, err := kgo.NewClient(kgo.SeedBrokers(re.broker))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrDeleteRecordsRequest()
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = eventsTopic
	rp := kmsg.NewDeleteRecordsRequestTopicPartition()
	rp.Partition, rp.Offset = int32(part), 1
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 5000
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, cl)
	if err != nil || resp.Topics[0].Partitions[0].ErrorCode != 0 {
		t.Fatalf("delete records: %v %+v", err, resp)
	}

	hook := "/v1/webhooks/" + w.ID + "/recover"
	re.expectError(re.do("POST", hook, app.Token, `{"since":"`+rfc(base)+`"}`), 422, "since_too_old", rfc(base.Add(time.Minute)))
	r := re.do("POST", hook, app.Token, `{"since":"`+rfc(base.Add(time.Minute))+`"}`)
	var started recoveryAnswer
	if r.status != 202 || json.Unmarshal(r.raw, &started) != nil {
		t.Fatalf("recover: %d %s", r.status, r.raw)
	}
	var v RecoveryView
	testenv.WaitFor(t, 30*time.Second, func() error {
		if v = re.recovery(app.Token, started.Recovery.ID); v.State != "done" {
			return fmt.Errorf("recovery %+v", v)
		}
		return nil
	})
	if v.Scanned != 2 || v.Matched != 2 || v.Queued != 2 {
		t.Fatalf("recovery %+v: want the 2 records left of acc-1's partition", v)
	}
	re.waitOn("/shop", 5)
}

func TestRecoveryWithoutKafka(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	w := e.createWebhook(app.Token, "acc-1", "order.create", "https://a.example.com/1")
	e.expectError(e.do("POST", "/v1/webhooks/"+w.ID+"/recover", app.Token, `{"since":"2026-03-04T00:00:00Z"}`), 503, "recovery_unavailable", "")
	e.expectError(e.do("GET", "/v1/recoveries/rec_1", app.Token, ""), 503, "recovery_unavailable", "")
	e.expectError(e.do("DELETE", "/v1/recoveries/rec_1", app.Token, ""), 503, "recovery_unavailable", "")
}

func TestPartitionerPicksTheAccountsPartition(t *testing.T) {
	for _, name := range []string{"murmur2", "crc32"} {
		b := balancer(name)
		if b == nil || !ValidPartitioner(name) {
			t.Fatalf("%s not known", name)
		}
	}
	if balancer("") != nil || ValidPartitioner("fnv") {
		t.Fatal("an unknown partitioner was taken")
	}
	// murmur2 names the partition geckohook's own writer (the API's ingest)
	// puts an account's events in; crc32 the one librdkafka's default
	// (kcat) does: crc32(key) modulo the partition count.
	ingest := kafkaio.NewWriter([]string{"127.0.0.1:1"}, eventsTopic).Balancer
	parts := []int{0, 1, 2, 3, 4, 5, 6, 7}
	for _, key := range []string{"acc-1", "acc-2", "77", "a-much-longer-account-id"} {
		m := kafka.Message{Key: []byte(key)}
		if got, want := balancer("murmur2").Balance(m, parts...), ingest.Balance(m, parts...); got != want {
			t.Errorf("murmur2 puts %s in %d, geckohook's writer in %d", key, got, want)
		}
		if got, want := balancer("crc32").Balance(m, parts...), int(crc32.ChecksumIEEE([]byte(key))%8); got != want {
			t.Errorf("crc32 puts %s in %d, librdkafka in %d", key, got, want)
		}
	}
}

// A recovery's owner stops when a DELETE on another API process marks it
// cancelled, and when its own API stops; either way it frees the webhook.
func TestRecoveryOwnerStops(t *testing.T) {
	re := startRecoverEnv(t, nil)
	app := re.createApp("shop")
	w := re.createWebhook(app.Token, "acc-1", "order.create", re.recv.URL+"/shop")
	// A second API process, sharing Redis and Kafka.
	owner := New(Options{Registry: re.reg, Log: zerolog.Nop(), Recovery: RecoveryOptions{
		Brokers: []string{re.broker}, Topic: eventsTopic, Redis: re.rdb, Prefix: "gh:",
	}})
	ctx := context.Background()
	lock := "gh:recovering:" + w.ID
	launch := func(id string) {
		t.Helper()
		// A span past the partition's end: the owner waits for records
		// that never come, so it is still running when stopped.
		now := time.Now()
		p := &plan{id: id, hook: re.reg.Webhook(w.ID), since: now.Add(-time.Hour), until: now,
			spans: []span{{partition: 0, from: 0, to: 1 << 40}}}
		re.rdb.Set(ctx, lock, id, lockTTL)
		if err := owner.writeState(ctx, p, app.ID, RecoveryView{ID: id, WebhookID: w.ID, State: recRunning,
			Since: rfc(p.since), Until: rfc(p.until)}); err != nil {
			t.Fatal(err)
		}
		if !owner.recs.launch(p) {
			t.Fatal("launch refused")
		}
	}
	wait := func(id, state string) RecoveryView {
		t.Helper()
		var v RecoveryView
		testenv.WaitFor(t, 10*time.Second, func() error {
			if re.rdb.Exists(ctx, lock).Val() == 1 {
				return fmt.Errorf("the webhook is still claimed")
			}
			if v = re.recovery(app.Token, id); v.State != state {
				return fmt.Errorf("recovery %+v", v)
			}
			return nil
		})
		return v
	}

	launch("rec_a")
	re.expectError(re.do("POST", "/v1/webhooks/"+w.ID+"/recover", app.Token, `{"since":"`+rfc(time.Now().Add(-time.Minute))+`"}`),
		409, "recovery_running", "rec_a")
	r := re.do("DELETE", "/v1/recoveries/rec_a", app.Token, "")
	if r.status != 200 {
		t.Fatalf("DELETE: %d %s", r.status, r.raw)
	}
	wait("rec_a", recCancelled)

	launch("rec_b")
	owner.recs.stop()
	if v := wait("rec_b", recFailed); !strings.Contains(v.Error, "stopped") {
		t.Fatalf("stopped recovery %+v", v)
	}
	if owner.recs.launch(&plan{id: "rec_c"}) {
		t.Fatal("a stopped API launched a recovery")
	}
}
