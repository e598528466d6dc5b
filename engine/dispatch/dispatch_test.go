package dispatch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
	"github.com/geckohook/geckohook/shard"
)

const partitions = 4

// env is a real redis-server and the embedded Kafka, a registry, a receiver
// farm on loopback, and one running dispatcher (more can be started).
type env struct {
	t      *testing.T
	broker string
	redis  *testenv.RedisServer
	rdb    *redis.Client
	reg    *registry.Registry
	disp   *Dispatcher
	recv   *loadtest.Receiver
	app    *registry.App
	writer *kafka.Writer
	now    time.Time
	tune   func(*Options)
	stop   func() // stops disp
}

func startEnv(t *testing.T, behaviour loadtest.Behaviour) *env {
	return startEnvWith(t, behaviour, func(*Options) {})
}

func startEnvWith(t *testing.T, behaviour loadtest.Behaviour, tune func(*Options), redisArgs ...string) *env {
	t.Helper()
	return startEnvClient(t, behaviour, tune, (*testenv.RedisServer).Client, redisArgs...)
}

// startEnvClient is startEnvWith whose registry and dispatchers use the
// Redis client that client makes.
func startEnvClient(t *testing.T, behaviour loadtest.Behaviour, tune func(*Options), client func(*testenv.RedisServer) *redis.Client, redisArgs ...string) *env {
	t.Helper()
	srv := testenv.Redis(t, redisArgs...)
	k := testenv.Kafka(t, partitions)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{t: t, broker: k.Addr(), redis: srv, rdb: client(srv), now: time.Unix(1_800_000_000, 0), tune: tune}
	if err := kafkaio.EnsureTopics(ctx, []string{e.broker},
		kafkaio.Topic{Name: "geckohook.events", Partitions: partitions},
		kafkaio.Topic{Name: "geckohook.events.dlq", Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	e.reg = registry.New(e.rdb, registry.Options{})
	if err := e.reg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	recv, err := loadtest.NewReceiver(behaviour)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Close() })
	e.recv = recv
	app, _, err := e.reg.CreateApp(ctx, "shop", "dev@example.com")
	if err != nil {
		t.Fatal(err)
	}
	e.app = app
	e.writer = kafkaio.NewWriter([]string{e.broker}, "geckohook.events")
	t.Cleanup(func() { _ = e.writer.Close() })
	e.disp, e.stop = e.startDispatcher()
	return e
}

// testSender reaches loopback receivers, with a 5s limit; maxConns 0 keeps
// the default connection limit per host.
func testSender(maxConns int) *sender.Sender {
	return sender.New(sender.Options{Policy: netguard.Policy{AllowPrivate: true, AllowHTTP: true}, Timeout: 5 * time.Second, MaxConnsPerHost: maxConns})
}

// startDispatcher runs one more dispatcher in the group; stop drains it and
// waits for Run to return. It is also stopped at test end.
func (e *env) startDispatcher() (*Dispatcher, func()) {
	t := e.t
	o := Options{
		Brokers: []string{e.broker}, Registry: e.reg, Catalog: catalog.Default(), Redis: e.rdb,
		Sender:         testSender(0),
		Workers:        16,
		MaxRetries:     contract.DefaultMaxRetries,
		CommitEvery:    50 * time.Millisecond,
		SessionTimeout: 6 * time.Second,
		DrainTimeout:   3 * time.Second,
		Log:            zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		Now:            func() time.Time { return e.now },
		Rand:           func(n int) int { return 3 % n },
	}
	e.tune(&o)
	d := New(o)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if err := d.Run(ctx); err != nil {
			t.Errorf("dispatcher: %v", err)
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-stopped:
			case <-time.After(30 * time.Second):
				t.Error("dispatcher did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	return d, stop
}

func (e *env) hook(account, event, path string) *registry.Webhook {
	e.t.Helper()
	w, err := e.reg.CreateWebhook(context.Background(), registry.Webhook{AppID: e.app.ID, AccountID: account, Event: event, Address: e.recv.URL + path})
	if err != nil {
		e.t.Fatal(err)
	}
	e.recv.Expect(path, e.app.Secret)
	return w
}

func (e *env) produce(key string, values ...string) {
	e.t.Helper()
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		msgs[i] = kafka.Message{Key: []byte(key), Value: []byte(v)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.writer.WriteMessages(ctx, msgs...); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) receivedOn(path string) []loadtest.Received {
	var out []loadtest.Received
	for _, r := range e.recv.Received() {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

func (e *env) waitReceived(path string, n int) []loadtest.Received {
	e.t.Helper()
	testenv.WaitFor(e.t, 30*time.Second, func() error {
		if got := len(e.receivedOn(path)); got < n {
			return fmt.Errorf("%s received %d of %d", path, got, n)
		}
		return nil
	})
	return e.receivedOn(path)
}

// committed returns the group's committed offsets summed over partitions,
// and the topic's end offsets summed the same way.
func (e *env) committedAndEnd() (int64, int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := &kafka.Client{Addr: kafka.TCP(e.broker)}
	parts := make([]int, partitions)
	var reqs []kafka.OffsetRequest
	for i := range parts {
		parts[i] = i
		reqs = append(reqs, kafka.LastOffsetOf(i))
	}
	of, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: "geckohook-dispatchers", Topics: map[string][]int{"geckohook.events": parts}})
	if err != nil {
		return -1, 0
	}
	lo, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{"geckohook.events": reqs}})
	if err != nil {
		return -1, 0
	}
	var committed, end int64
	for _, p := range of.Topics["geckohook.events"] {
		if p.CommittedOffset > 0 {
			committed += p.CommittedOffset
		}
	}
	for _, p := range lo.Topics["geckohook.events"] {
		end += p.LastOffset
	}
	return committed, end
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestDispatcher(t *testing.T) {
	e := startEnv(t, func(path string, n int) int {
		switch {
		case strings.HasPrefix(path, "/gone"):
			return 410
		case strings.HasPrefix(path, "/fail"):
			return 500
		case strings.HasPrefix(path, "/redirect"):
			return 302
		}
		return 200
	})

	t.Run("delivers signed events from kafka-go and kcat", func(t *testing.T) {
		e.hook("acc1", "fulfillments.create", "/a")
		e.hook("acc1", "fulfillments.create", "/b")
		e.hook("acc1", "order.create", "/other-event")
		e.hook("acc2", "fulfillments.create", "/other-account")
		var values []string
		for i := 0; i < 20; i++ {
			values = append(values, fmt.Sprintf(`{"account_id":"acc1","event":"fulfillments.create","object_id":%d,"timestamp":1546272000}`, 1234567+i))
		}
		e.produce("acc1", values...)
		kcat := testenv.Tool(t, "kcat")
		cmd := exec.Command(kcat, "-b", e.broker, "-t", "geckohook.events", "-P", "-k", "acc1")
		cmd.Stdin = strings.NewReader(`{"account_id":"acc1","event":"fulfillments.create","object_id":99,"timestamp":1546272001,"resource_url":"https://api.tradegecko.com/fulfillments/99.json?x=1&y=<2>"}` + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kcat: %v: %s", err, out)
		}
		for _, path := range []string{"/a", "/b"} {
			got := e.waitReceived(path, 21)
			if len(got) != 21 {
				t.Fatalf("%s received %d deliveries, want 21", path, len(got))
			}
			ids := map[string]bool{}
			var seed, fromKcat bool
			for _, r := range got {
				if !r.ValidSig {
					t.Errorf("%s: invalid signature %q for body %s", path, r.Signature, r.Body)
				}
				if !uuidRE.MatchString(r.DeliveryID) || ids[r.DeliveryID] {
					t.Errorf("%s: bad or repeated delivery id %q", path, r.DeliveryID)
				}
				ids[r.DeliveryID] = true
				if r.ContentType != "application/json" || !strings.HasPrefix(r.UserAgent, "geckohook/") {
					t.Errorf("%s: content type %q, user agent %q", path, r.ContentType, r.UserAgent)
				}
				switch string(r.Body) {
				case `{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json"}`:
					seed = true
				case `{"object_id":99,"event":"fulfillments.create","timestamp":1546272001,"resource_url":"https://api.tradegecko.com/fulfillments/99.json?x=1&y=<2>"}`:
					fromKcat = true
				}
			}
			if !seed || !fromKcat {
				t.Errorf("%s: seed body seen %v, kcat body seen %v", path, seed, fromKcat)
			}
		}
		// Same event, two webhooks: two different delivery ids.
		a, b := e.receivedOn("/a"), e.receivedOn("/b")
		if a[0].DeliveryID == b[0].DeliveryID && string(a[0].Body) == string(b[0].Body) {
			t.Error("two webhooks of one event share a delivery id")
		}
		if n := len(e.receivedOn("/other-event")) + len(e.receivedOn("/other-account")); n != 0 {
			t.Errorf("%d deliveries went to webhooks of another event or account", n)
		}
		// Every event is done, so the committed offsets reach the end.
		testenv.WaitFor(t, 15*time.Second, func() error {
			c, end := e.committedAndEnd()
			if c != end {
				return fmt.Errorf("committed %d, end %d", c, end)
			}
			return nil
		})
	})

	t.Run("redirect counts as success and is not followed", func(t *testing.T) {
		e.hook("acc3", "order.create", "/redirect")
		e.produce("acc3", `{"account_id":"acc3","event":"order.create","object_id":1}`)
		got := e.waitReceived("/redirect", 1)
		if got[0].Status != 302 {
			t.Fatalf("status %d", got[0].Status)
		}
		testenv.WaitFor(t, 10*time.Second, func() error {
			if e.disp.Stats.Delivered.Load() < 43 {
				return fmt.Errorf("delivered %d", e.disp.Stats.Delivered.Load())
			}
			return nil
		})
		if len(e.receivedOn("/redirect")) != 1 {
			t.Fatal("a 302 was retried or followed")
		}
	})

	t.Run("the shards' shared fetches are counted", func(t *testing.T) {
		n, parts := e.disp.Stats.FetchRequests.Load(), e.disp.Stats.FetchPartitions.Load()
		if n == 0 || parts < n {
			t.Fatalf("%d fetch requests asking %d partitions after deliveries", n, parts)
		}
	})

	t.Run("410 deletes the webhook and later events skip it", func(t *testing.T) {
		gone := e.hook("acc4", "order.create", "/gone")
		e.hook("acc4", "order.create", "/ok4")
		e.produce("acc4", `{"account_id":"acc4","event":"order.create","object_id":1}`)
		e.waitReceived("/gone", 1)
		testenv.WaitFor(t, 10*time.Second, func() error {
			if e.reg.Webhook(gone.ID) != nil {
				return fmt.Errorf("webhook %s still registered", gone.ID)
			}
			if n, _ := e.rdb.HExists(context.Background(), "gh:webhooks", gone.ID).Result(); n {
				return fmt.Errorf("webhook %s still in Redis", gone.ID)
			}
			return nil
		})
		e.produce("acc4", `{"account_id":"acc4","event":"order.create","object_id":2}`, `{"account_id":"acc4","event":"order.create","object_id":3}`)
		e.waitReceived("/ok4", 3)
		if n := len(e.receivedOn("/gone")); n != 1 {
			t.Fatalf("deleted webhook received %d deliveries, want 1", n)
		}
	})

	t.Run("500 leaves a correctly scheduled record in Redis", func(t *testing.T) {
		w := e.hook("acc5", "invoice.create", "/fail")
		e.produce("acc5", `{"account_id":"acc5","event":"invoice.create","object_id":77,"timestamp":1700000000}`)
		got := e.waitReceived("/fail", 1)
		id := got[0].DeliveryID
		var rec *shard.Record
		var due time.Time
		testenv.WaitFor(t, 10*time.Second, func() error {
			for p := 0; p < partitions; p++ {
				q := shard.NewQueue(e.rdb, "gh:", "geckohook.events", p)
				r, d, err := q.Get(context.Background(), id)
				if err == nil {
					rec, due = r, d
					return nil
				}
			}
			return fmt.Errorf("delivery %s not in any retry queue", id)
		})
		// Injected clock and rand: first retry waits 0^4 + 15 + 3 seconds.
		if want := e.now.Add(18 * time.Second); !due.Equal(want) {
			t.Errorf("due %v, want %v", due, want)
		}
		if rec.WebhookID != w.ID || rec.Attempts != 1 || rec.LastStatus != 500 || rec.LastError != "HTTP 500" ||
			string(rec.Body) != string(got[0].Body) || !rec.FirstAttempt.Equal(e.now) || rec.Event != "invoice.create" {
			t.Errorf("record %+v", rec)
		}
		if len(e.receivedOn("/fail")) != 1 {
			t.Error("a failed delivery was retried at once instead of scheduled")
		}
	})

	t.Run("malformed events go to the dead-letter topic and later events flow", func(t *testing.T) {
		e.hook("acc6", "order.create", "/ok6")
		e.produce("acc6", `not json at all`, `{"account_id":"acc6","event":"order.exploded","object_id":1}`,
			`{"account_id":"acc6","event":"order.create","object_id":6}`)
		e.waitReceived("/ok6", 1)
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.broker}, Topic: "geckohook.events.dlq", Partition: 0, MaxWait: 100 * time.Millisecond})
		defer r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		reasons := map[string]string{}
		for len(reasons) < 2 {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("reading dead letters: %v (have %v)", err, reasons)
			}
			h := map[string]string{}
			for _, x := range m.Headers {
				h[x.Key] = string(x.Value)
			}
			if _, err := strconv.Atoi(h["geckohook-source-offset"]); err != nil || h["geckohook-source-topic"] != "geckohook.events" {
				t.Errorf("dead letter headers %v", h)
			}
			reasons[string(m.Value)] = h["geckohook-error"]
		}
		if reasons["not json at all"] != "invalid_json" || reasons[`{"account_id":"acc6","event":"order.exploded","object_id":1}`] != "unknown_event" {
			t.Fatalf("dead letters %v", reasons)
		}
	})

	t.Run("concurrent flood is fully delivered and committed", func(t *testing.T) {
		for i := 0; i < 10; i++ {
			e.hook("flood"+strconv.Itoa(i), "product.create", "/flood")
		}
		var wg sync.WaitGroup
		for i := 0; i < 10; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				var vals []string
				for j := 0; j < 100; j++ {
					vals = append(vals, fmt.Sprintf(`{"account_id":"flood%d","event":"product.create","object_id":%d}`, i, j))
				}
				e.produce("flood"+strconv.Itoa(i), vals...)
			}(i)
		}
		wg.Wait()
		got := e.waitReceived("/flood", 1000)
		ids := map[string]bool{}
		for _, r := range got {
			ids[r.DeliveryID] = true
			if !r.ValidSig {
				t.Fatalf("bad signature on %s", r.DeliveryID)
			}
		}
		if len(ids) != 1000 {
			t.Fatalf("%d distinct deliveries, want 1000", len(ids))
		}
		testenv.WaitFor(t, 15*time.Second, func() error {
			c, end := e.committedAndEnd()
			if c != end {
				return fmt.Errorf("committed %d, end %d", c, end)
			}
			return nil
		})
	})
}

// A host that does not answer holds at most its gate's limit of workers; the
// other hosts' deliveries flow meanwhile, and its own wait without retries
// while it has shown no failure.
func TestSlowHostDoesNotStallOthers(t *testing.T) {
	release := make(chan struct{})
	var entered atomic.Int64
	e := startEnvWith(t, loadtest.Always(200), func(o *Options) {
		o.Workers = 16
		o.Sender = testSender(4)
		o.SlowAttempt = time.Minute
		o.StallAfter = time.Minute // slow, not stalled: its deliveries wait their turn
	})
	slow, err := loadtest.NewReceiver(func(string, int) int {
		entered.Add(1)
		<-release
		return 200
	})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	w, err := e.reg.CreateWebhook(context.Background(), registry.Webhook{AppID: e.app.ID, AccountID: "acc-s", Event: "order.create", Address: slow.URL + "/slow"})
	if err != nil {
		t.Fatal(err)
	}
	slow.Expect("/slow", e.app.Secret)
	e.hook("acc-f", "order.create", "/fast")
	var slowVals, fastVals []string
	for i := 0; i < 30; i++ {
		slowVals = append(slowVals, fmt.Sprintf(`{"account_id":"acc-s","event":"order.create","object_id":%d}`, i))
		fastVals = append(fastVals, fmt.Sprintf(`{"account_id":"acc-f","event":"order.create","object_id":%d}`, i))
	}
	e.produce("acc-s", slowVals...)
	e.produce("acc-f", fastVals...)
	e.waitReceived("/fast", 30)
	// The two accounts' events may sit in different partitions, fetched at
	// different moments: wait for the stuck host to fill its limit, then
	// check that it got no more.
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := entered.Load(); n < 4 {
			return fmt.Errorf("%d attempts reached the stuck host, want its limit 4", n)
		}
		return nil
	})
	if n := entered.Load(); n != 4 {
		t.Errorf("%d attempts reached the stuck host at once, want its limit 4", n)
	}
	if f := e.disp.Stats.Failed.Load(); f != 0 {
		t.Errorf("%d failures before the slow host timed out: healthy hosts must not spill into retries", f)
	}
	close(release)
	testenv.WaitFor(t, 20*time.Second, func() error {
		if n := len(slow.Received()); n < 30 {
			return fmt.Errorf("slow host got %d of 30", n)
		}
		return nil
	})
	if e.reg.Webhook(w.ID) == nil || e.disp.Stats.Failed.Load() != 0 {
		t.Errorf("slow host's deliveries failed (%d) instead of waiting their turn", e.disp.Stats.Failed.Load())
	}
}

func objectIDs(rs []loadtest.Received) map[int]int {
	out := map[int]int{}
	for _, r := range rs {
		var b struct {
			ObjectID int `json:"object_id"`
		}
		if err := json.Unmarshal(r.Body, &b); err == nil {
			out[b.ObjectID]++
		}
	}
	return out
}

func events(account string, n int) []string {
	vals := make([]string, n)
	for i := range vals {
		vals[i] = fmt.Sprintf(`{"account_id":%q,"event":"order.create","object_id":%d}`, account, i)
	}
	return vals
}

// Redis going away must hold the offsets of failed deliveries, not drop
// them: once it is back (from its AOF) every failure is in the retry queue
// and the offsets move on.
func TestRedisOutageHoldsOffsetsAndLosesNothing(t *testing.T) {
	e := startEnvWith(t, loadtest.Always(500), func(*Options) {}, "--appendonly", "yes", "--appendfsync", "always")
	e.hook("acc-r", "order.create", "/fail-r")
	e.redis.Kill()
	e.produce("acc-r", events("acc-r", 10)...)
	got := e.waitReceived("/fail-r", 10)
	for i := 0; i < 20; i++ { // 20 commit intervals
		if c, end := e.committedAndEnd(); c >= end && end > 0 {
			t.Fatalf("offsets committed to %d (end %d) while the failures could not be written", c, end)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.redis.Restart()
	testenv.WaitFor(t, 30*time.Second, func() error {
		c, end := e.committedAndEnd()
		if c != end {
			return fmt.Errorf("committed %d of %d", c, end)
		}
		return nil
	})
	var scheduled int64
	for p := 0; p < partitions; p++ {
		n, err := shard.NewQueue(e.rdb, "gh:", "geckohook.events", p).Len(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		scheduled += n
	}
	ids := map[string]bool{}
	for _, r := range got {
		ids[r.DeliveryID] = true
	}
	if scheduled != int64(len(ids)) || len(ids) != 10 {
		t.Fatalf("%d deliveries scheduled for %d distinct failed deliveries, want 10 and 10", scheduled, len(ids))
	}
}

// Stopping a dispatcher lets its in-flight deliveries finish and commits
// behind them: the next owner neither loses nor repeats an event.
func TestShutdownDrainsInFlightAndCommits(t *testing.T) {
	var entered atomic.Int64
	e := startEnvWith(t, func(string, int) int {
		entered.Add(1)
		time.Sleep(100 * time.Millisecond) // a slowish endpoint, so the stop finds work in flight
		return 200
	}, func(o *Options) {
		o.Workers, o.Window, o.DrainTimeout = 4, 4, 20*time.Second
	})
	e.hook("acc-d", "order.create", "/drain")
	e.produce("acc-d", events("acc-d", 40)...)
	e.waitReceived("/drain", 2)
	e.stop()
	first := len(e.receivedOn("/drain"))
	if n := entered.Load(); n != int64(first) {
		t.Fatalf("%d requests started but %d completed: the stop cut deliveries off", n, first)
	}
	if first >= 40 {
		t.Fatalf("all 40 delivered before the stop took effect (window 4 should have held most back)")
	}
	t.Logf("%d of 40 delivered by the first dispatcher", first)
	e.startDispatcher()
	got := e.waitReceived("/drain", 40)
	ids := objectIDs(got)
	for i := 0; i < 40; i++ {
		if ids[i] != 1 {
			t.Errorf("object %d delivered %d times, want exactly once across the restart", i, ids[i])
		}
	}
}

// A second dispatcher in the group takes half the partitions; when it
// leaves, the first takes them back, and every event is delivered.
func TestRebalanceSharesPartitions(t *testing.T) {
	e := startEnv(t, loadtest.Always(200))
	for i := 0; i < 8; i++ {
		e.hook("acc-b"+strconv.Itoa(i), "order.create", "/rebalance")
	}
	d2, stop2 := e.startDispatcher()
	testenv.WaitFor(t, 30*time.Second, func() error {
		a, b := e.disp.Stats.Shards.Load(), d2.Stats.Shards.Load()
		if a+b != partitions || a == 0 || b == 0 {
			return fmt.Errorf("shards held: %d and %d", a, b)
		}
		return nil
	})
	produceAll := func(from int) {
		for i := 0; i < 8; i++ {
			var vals []string
			for j := from; j < from+25; j++ {
				vals = append(vals, fmt.Sprintf(`{"account_id":"acc-b%d","event":"order.create","object_id":%d}`, i, i*1000+j))
			}
			e.produce("acc-b"+strconv.Itoa(i), vals...)
		}
	}
	produceAll(0)
	e.waitReceived("/rebalance", 200)
	if d2.Stats.Delivered.Load() == 0 || e.disp.Stats.Delivered.Load() == 0 {
		t.Errorf("work not shared: %d and %d delivered", e.disp.Stats.Delivered.Load(), d2.Stats.Delivered.Load())
	}
	stop2()
	testenv.WaitFor(t, 30*time.Second, func() error {
		if a := e.disp.Stats.Shards.Load(); a != partitions {
			return fmt.Errorf("first dispatcher holds %d shards", a)
		}
		return nil
	})
	produceAll(100)
	got := e.waitReceived("/rebalance", 400)
	ids := objectIDs(got)
	for i := 0; i < 8; i++ {
		for _, from := range []int{0, 100} {
			for j := from; j < from+25; j++ {
				if ids[i*1000+j] == 0 {
					t.Fatalf("object %d never delivered", i*1000+j)
				}
			}
		}
	}
}

// A bad event too big to copy whole into the dead-letter topic is cut down,
// not retried forever: the partition's offset moves on.
func TestHugeBadEventIsDeadLetteredTruncated(t *testing.T) {
	e := startEnv(t, loadtest.Always(200))
	e.hook("acc-h", "order.create", "/after-huge")
	huge := strings.Repeat("x", 900_000)
	e.produce("acc-h", huge, `{"account_id":"acc-h","event":"order.create","object_id":1}`)
	e.waitReceived("/after-huge", 1)
	testenv.WaitFor(t, 15*time.Second, func() error {
		if c, end := e.committedAndEnd(); c != end {
			return fmt.Errorf("committed %d of %d", c, end)
		}
		return nil
	})
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{e.broker}, Topic: "geckohook.events.dlq", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	if len(m.Value) != maxDeadLetterValue || h["geckohook-truncated-from"] != "900000" || h["geckohook-error"] != "invalid_json" {
		t.Fatalf("dead letter: %d bytes, headers %v", len(m.Value), h)
	}
}

// Deliveries still parked behind a busy host when a shard gives up its
// partition are not sent afterwards: the next owner replays them, and the
// stop does not wait for them.
func TestStoppedShardSendsNothingMore(t *testing.T) {
	var entered atomic.Int64
	e := startEnvWith(t, func(string, int) int {
		entered.Add(1)
		time.Sleep(500 * time.Millisecond)
		return 200
	}, func(o *Options) {
		o.Sender, o.DrainTimeout = testSender(2), time.Second
	})
	e.hook("acc-p", "order.create", "/parked")
	e.produce("acc-p", events("acc-p", 30)...)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if entered.Load() < 2 {
			return fmt.Errorf("%d requests started", entered.Load())
		}
		return nil
	})
	start := time.Now()
	e.stop()
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("stop took %v with a 1s drain timeout", took)
	}
	atStop := entered.Load()
	time.Sleep(time.Second) // two request lengths: anything still queued would have started
	if n := entered.Load(); n != atStop {
		t.Fatalf("%d requests started after the shard stopped", n-atStop)
	}
	if atStop >= 30 {
		t.Fatalf("all 30 were sent before the stop; the test proves nothing")
	}
}

// A host that stops answering is found stalled long before its first
// timeout: its queue is cut to its limit and the rest goes to the retry
// queue, so it cannot fill the shard's window and starve the other hosts of
// the same partition.
func TestDeadHostDoesNotFillTheWindow(t *testing.T) {
	release := make(chan struct{})
	var entered atomic.Int64
	e := startEnvWith(t, loadtest.Always(200), func(o *Options) {
		o.Workers, o.Sender, o.Window, o.StallAfter = 16, testSender(4), 32, 200*time.Millisecond
	})
	dead := hangingReceiver(t, release, &entered)
	if _, err := e.reg.CreateWebhook(context.Background(), registry.Webhook{AppID: e.app.ID, AccountID: "acc-dead", Event: "order.create", Address: dead.URL + "/dead"}); err != nil {
		t.Fatal(err)
	}
	e.hook("acc-live", "order.create", "/live")
	var vals []string
	for i := 0; i < 50; i++ {
		vals = append(vals,
			fmt.Sprintf(`{"account_id":"acc-dead","event":"order.create","object_id":%d}`, i),
			fmt.Sprintf(`{"account_id":"acc-live","event":"order.create","object_id":%d}`, i))
	}
	e.produce("same-partition", vals...) // one key: one partition, one window
	e.waitReceived("/live", 50)
	if n := entered.Load(); n > 4 {
		t.Errorf("%d attempts reached the dead host, want at most its limit 4", n)
	}
	if e.disp.Stats.Failed.Load() == 0 {
		t.Fatal("nothing was shed from the dead host's queue")
	}
	// Everything that failed so far was shed, none timed out: the live host
	// did not wait for the dead one's 5s timeouts.
	for p := 0; p < partitions; p++ {
		q := shard.NewQueue(e.rdb, "gh:", "geckohook.events", p)
		recs, unreadable, err := q.Records(context.Background(), shard.Scheduled)
		if err != nil || unreadable != 0 {
			t.Fatal(unreadable, err)
		}
		for _, rec := range recs {
			id := rec.ID
			if !strings.HasPrefix(rec.LastError, "host_saturated") || rec.Attempts != 0 || rec.Deferrals != 1 {
				t.Errorf("delivery %s failed with %q after %d attempts and %d deferrals, want shed once without an attempt", id, rec.LastError, rec.Attempts, rec.Deferrals)
			}
		}
	}
}

// hangingReceiver is an endpoint that takes requests and answers none until
// release is closed (at test end, before the receiver stops); entered
// counts the requests it took.
func hangingReceiver(t *testing.T, release chan struct{}, entered *atomic.Int64) *loadtest.Receiver {
	t.Helper()
	r, err := loadtest.NewReceiver(func(string, int) int {
		entered.Add(1)
		<-release
		return 200
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	t.Cleanup(func() { close(release) }) // runs first: lets the stuck attempts end
	return r
}

// A delivery is sent as its webhook and application are when its attempt
// starts, not as they were when its event was matched: a webhook deleted
// while its delivery waits behind its host's limit gets nothing, and a
// secret rotated meanwhile signs what is still to go.
func TestDeliveryFollowsRegistryChanges(t *testing.T) {
	release := make(chan struct{})
	first := make(chan string, 2)
	e := startEnvWith(t, func(path string, _ int) int {
		first <- path
		<-release
		return 200
	}, func(o *Options) {
		o.Sender = testSender(1) // one attempt at a time to the receiver's host
		o.SlowAttempt = time.Minute
		o.StallAfter = time.Minute
	})
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	e.hook("acc-1", "order.create", "/keep")
	gone := e.hook("acc-1", "order.create", "/gone")
	e.produce("acc-1", `{"account_id":"acc-1","event":"order.create","object_id":1}`)
	// One delivery is at the receiver, the other waits behind the limit.
	var inFlight string
	select {
	case inFlight = <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery reached the receiver")
	}
	ctx := context.Background()
	if err := e.reg.DeleteWebhook(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	rotated, err := e.reg.RotateSecret(ctx, e.app.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	e.recv.Expect("/keep", rotated.Secret)
	close(release)
	released = true
	testenv.WaitFor(t, 10*time.Second, func() error {
		if s := e.disp.Stats; s.Delivered.Load()+s.Dropped.Load() != 2 {
			return fmt.Errorf("delivered %d, dropped %d of 2", s.Delivered.Load(), s.Dropped.Load())
		}
		return nil
	})
	got := e.recv.Received()
	switch inFlight {
	case "/keep": // /gone waited, and was deleted meanwhile
		if len(got) != 1 || e.disp.Stats.Dropped.Load() != 1 {
			t.Fatalf("the receiver got %d requests, %d dropped: want the deleted webhook's delivery dropped", len(got), e.disp.Stats.Dropped.Load())
		}
	case "/gone": // /keep waited, and its secret was rotated meanwhile
		if len(got) != 2 || got[1].Path != "/keep" || !got[1].ValidSig {
			var seen []string
			for _, r := range got {
				seen = append(seen, fmt.Sprintf("%s (valid signature %v)", r.Path, r.ValidSig))
			}
			t.Fatalf("received %v: want /keep signed with the rotated secret", seen)
		}
	default:
		t.Fatalf("request to %s", inFlight)
	}
}

// An event's body is shared by its deliveries and reused for a later event
// once the last of them is released. A delivery held at a slow host, or
// failing and written to the retry queue, must keep its event's bytes
// while other events flow through the pool: every webhook of an event gets
// the same body, and the queued record stores it too.
func TestSharedBodyOutlivesTheEventsOtherDeliveries(t *testing.T) {
	e := startEnvWith(t, func(path string, _ int) int {
		switch path {
		case "/slow":
			time.Sleep(5 * time.Millisecond)
		case "/fail":
			return 500
		}
		return 200
	}, func(o *Options) { o.Sender = testSender(2) })
	e.hook("acc-b", "order.create", "/fast")
	e.hook("acc-b", "order.create", "/slow")
	e.hook("acc-b", "order.create", "/fail")
	e.hook("acc-o", "order.create", "/other")
	const n = 150
	e.produce("acc-b", events("acc-b", n)...)
	e.produce("acc-o", events("acc-o", 3*n)...)
	fast := e.waitReceived("/fast", n)
	byObject := map[int][]byte{} // the body /fast got, by object id
	for _, r := range fast {
		for id := range objectIDs([]loadtest.Received{r}) {
			byObject[id] = r.Body
		}
	}
	slowIDs := map[string]bool{}
	if len(byObject) != n {
		t.Fatalf("/fast got %d distinct events, want %d", len(byObject), n)
	}
	for _, r := range e.waitReceived("/slow", n) {
		for id := range objectIDs([]loadtest.Received{r}) {
			if !bytes.Equal(r.Body, byObject[id]) {
				t.Fatalf("/slow got for object %d\n%s\nwhere /fast got\n%s", id, r.Body, byObject[id])
			}
			slowIDs[r.DeliveryID] = true
		}
	}
	failed := e.waitReceived("/fail", n)
	testenv.WaitFor(t, 10*time.Second, func() error {
		for _, r := range failed {
			d := e.find(r.DeliveryID)
			if d == nil {
				return fmt.Errorf("failure %s not queued yet", r.DeliveryID)
			}
			ids := objectIDs([]loadtest.Received{{Body: d.Body}})
			if len(ids) != 1 {
				t.Fatalf("queued body %q", d.Body)
			}
			for id := range ids {
				if !bytes.Equal(d.Body, byObject[id]) || !bytes.Equal(r.Body, byObject[id]) {
					t.Fatalf("object %d: sent %q, queued %q, want %q", id, r.Body, d.Body, byObject[id])
				}
			}
		}
		return nil
	})
	if len(slowIDs) != n {
		t.Fatalf("/slow got %d distinct deliveries, want %d", len(slowIDs), n)
	}
}
