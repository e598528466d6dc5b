package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
	"github.com/geckohook/geckohook/shard"
)

// The fault tests run geckohook as separate processes against `geckohook
// broker` and a real redis-server with AOF (appendfsync always), flood
// events at a receiver farm that fails every first attempt and then answers
// 200 slowly, break something while the retries are under way (claims
// leased and attempts in flight), and check at the end that every (event,
// webhook) pair was answered 2xx at least once, that duplicates share their
// delivery id, that every signature is valid, and that the retry queues
// end empty.

const (
	faultPartitions = 4
	faultAccounts   = 10
	faultEvents     = 1500 // two webhooks per account: 3,000 deliveries
)

type faultRig struct {
	t        *testing.T
	redis    *testenv.RedisServer
	rdb      *redis.Client
	broker   string
	apiAddr  string
	recv     *loadtest.Receiver
	answered atomic.Int64 // requests the farm has taken
	slow     atomic.Int64 // retries being answered right now
	paths    []string
	produced atomic.Int64
}

func newFaultRig(t *testing.T) *faultRig {
	t.Helper()
	r := &faultRig{t: t}
	r.redis = testenv.Redis(t, "--appendonly", "yes", "--appendfsync", "always")
	r.rdb = r.redis.Client()
	recv, err := loadtest.NewReceiver(func(string, int) int {
		// The flood's first attempts fail; every later one is a retry (or
		// a replay), answered slowly so attempts are in flight when the
		// fault hits.
		if r.answered.Add(1) <= faultEvents*2 {
			return 500
		}
		r.slow.Add(1)
		defer r.slow.Add(-1)
		time.Sleep(300 * time.Millisecond)
		return 200
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Close() })
	r.recv = recv
	r.broker = freeAddr(t)
	_, out, _ := startProcess(t, "broker", "--embedded-kafka-listen", r.broker, "--partitions", fmt.Sprint(faultPartitions))
	testenv.WaitFor(t, 20*time.Second, func() error {
		if !strings.Contains(out.String(), "listening on "+r.broker) {
			return fmt.Errorf("broker not up")
		}
		return nil
	})
	r.apiAddr = freeAddr(t)
	return r
}

// args are the settings every geckohook process of the rig shares: short
// session timeout and lease so a killed process's partitions and claims
// come back within seconds.
func (r *faultRig) args(role string, extra ...string) []string {
	a := []string{role, "--kafka-brokers", r.broker, "--redis-addr", r.redis.Addr,
		"--allow-private-targets", "--allow-http", "--log-format", "json", "--log-level", "warn",
		"--kafka-session-timeout", "6s", "--request-timeout", "2s", "--retry-lease", "5s"}
	if role == "all" {
		a = append(a, "--api-listen", r.apiAddr, "--admin-token", "admin-secret")
	}
	return append(a, extra...)
}

// start runs one geckohook process and waits for its health endpoint
// (the API's, or the metrics one for a dispatcher).
func (r *faultRig) start(role string, extra ...string) (*exec.Cmd, chan error) {
	r.t.Helper()
	health := "http://" + r.apiAddr + "/healthz"
	if role == "dispatcher" {
		m := freeAddr(r.t)
		extra = append(extra, "--metrics-listen", m)
		health = "http://" + m + "/healthz"
	}
	cmd, _, exited := startProcess(r.t, r.args(role, extra...)...)
	testenv.WaitFor(r.t, 30*time.Second, func() error {
		if code, _, err := get(health); err != nil || code != 200 {
			return fmt.Errorf("%s not healthy: %d %v", role, code, err)
		}
		return nil
	})
	return cmd, exited
}

// setUp registers one application and two webhooks per account through
// the API.
func (r *faultRig) setUp() {
	t := r.t
	base := "http://" + r.apiAddr
	code, body := apiCall(t, "POST", base+"/v1/applications", "admin-secret", `{"application":{"name":"Shop","developer_email":"dev@example.com"}}`)
	if code != 201 {
		t.Fatalf("create application: %d %v", code, body)
	}
	app := body["application"].(map[string]any)
	for a := 0; a < faultAccounts; a++ {
		for h := 0; h < 2; h++ {
			path := fmt.Sprintf("/acc%d/h%d", a, h)
			r.recv.Expect(path, app["secret"].(string))
			if code, body := apiCall(t, "POST", base+"/v1/webhooks", app["token"].(string),
				fmt.Sprintf(`{"webhook":{"account_id":"acc-%d","event":"order.create","address":"%s%s"}}`, a, r.recv.URL, path)); code != 201 {
				t.Fatalf("create webhook: %d %v", code, body)
			}
			r.paths = append(r.paths, path)
		}
	}
}

// flood writes faultEvents events into Kafka over about d, in the
// background.
func (r *faultRig) flood(d time.Duration) chan error {
	done := make(chan error, 1)
	w := kafkaio.NewWriter([]string{r.broker}, "geckohook.events")
	go func() {
		defer w.Close()
		const batches = 20
		per := faultEvents / batches
		for b := 0; b < batches; b++ {
			msgs := make([]kafka.Message, per)
			for i := range msgs {
				n := b*per + i
				acc := fmt.Sprintf("acc-%d", n%faultAccounts)
				msgs[i] = kafka.Message{Key: []byte(acc), Value: []byte(fmt.Sprintf(
					`{"account_id":%q,"event":"order.create","object_id":%d,"timestamp":1700000000}`, acc, n))}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := w.WriteMessages(ctx, msgs...)
			cancel()
			if err != nil {
				done <- fmt.Errorf("cannot produce batch %d: %w", b, err)
				return
			}
			r.produced.Add(int64(per))
			time.Sleep(d / batches)
		}
		done <- nil
	}()
	return done
}

// floodUntilRetrying registers the webhooks, floods, and returns once
// retries are under way, with the flood's completion.
func (r *faultRig) floodUntilRetrying() chan error {
	r.setUp()
	flooded := r.flood(2 * time.Second)
	r.waitRetrying()
	return flooded
}

// waitRetrying waits until retries are flowing, with some being answered
// right now: the first 100 pairs were answered 2xx, which only a retry
// (15-25 s after the failure) can do, and at least 5 attempts are in flight.
func (r *faultRig) waitRetrying() {
	r.t.Helper()
	testenv.WaitFor(r.t, 60*time.Second, func() error {
		ok := 0
		for _, got := range r.recv.Received() {
			if got.Status < 300 {
				ok++
			}
		}
		if n := r.slow.Load(); ok < 100 || n < 5 {
			return fmt.Errorf("%d retries answered 2xx so far, %d in flight", ok, n)
		}
		return nil
	})
}

// queued returns the deliveries left in the retry queues, due and dead.
func (r *faultRig) queued() (due, dead int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for p := 0; p < faultPartitions; p++ {
		q := shard.NewQueue(r.rdb, "gh:", "geckohook.events", p)
		n, err := q.Len(ctx)
		if err != nil {
			return 0, 0, err
		}
		m, err := q.DeadLen(ctx)
		if err != nil {
			return 0, 0, err
		}
		due, dead = due+n, dead+m
	}
	return due, dead, nil
}

type pair struct {
	path   string
	object int
}

// checkEverything waits until every pair was answered 2xx and the queues
// are empty, then checks ids and signatures. It returns how many pairs
// were answered 2xx more than once.
func (r *faultRig) checkEverything(flooded chan error) int {
	t := r.t
	if err := <-flooded; err != nil {
		t.Fatal(err)
	}
	var byPair map[pair][]loadtest.Received
	testenv.WaitFor(t, 90*time.Second, func() error {
		byPair = map[pair][]loadtest.Received{}
		for _, got := range r.recv.Received() {
			var ev struct {
				ObjectID int `json:"object_id"`
			}
			if err := json.Unmarshal(got.Body, &ev); err != nil {
				t.Fatalf("undecodable body %q: %v", got.Body, err)
			}
			k := pair{got.Path, ev.ObjectID}
			byPair[k] = append(byPair[k], got)
		}
		missing := 0
		for n := 0; n < faultEvents; n++ {
			for h := 0; h < 2; h++ {
				ok := false
				for _, got := range byPair[pair{fmt.Sprintf("/acc%d/h%d", n%faultAccounts, h), n}] {
					ok = ok || got.Status < 300
				}
				if !ok {
					missing++
				}
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d pairs not yet answered 2xx", missing, faultEvents*2)
		}
		due, dead, err := r.queued()
		if err != nil || due != 0 || dead != 0 {
			return fmt.Errorf("retry queues: %d due, %d dead (%v)", due, dead, err)
		}
		return nil
	})
	attempts, dups, retried := 0, 0, 0
	for k, list := range byPair {
		attempts += len(list)
		ok := 0
		for _, got := range list {
			if got.DeliveryID != list[0].DeliveryID {
				t.Fatalf("pair %v arrived with two delivery ids: %s and %s", k, list[0].DeliveryID, got.DeliveryID)
			}
			if !got.ValidSig {
				t.Fatalf("pair %v: invalid signature", k)
			}
			if got.Status < 300 {
				ok++
			}
		}
		if ok > 1 {
			dups++
		}
		if list[0].Status >= 300 {
			retried++
		}
	}
	if retried != faultEvents*2 {
		t.Fatalf("%d of %d pairs failed their first attempt; every one must have gone through the retry queue", retried, faultEvents*2)
	}
	t.Logf("%d pairs, %d attempts, %d pairs retried, %d delivered more than once (same id)", len(byPair), attempts, retried, dups)
	return dups
}

func stopProcess(t *testing.T, cmd *exec.Cmd, exited chan error) {
	t.Helper()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("process exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("process did not stop within 30s of SIGTERM")
	}
}

// SIGKILL the only geckohook process while it holds claimed retries, then
// start it again: the claims come back when their lease ends.
func TestCrashLosesNothing(t *testing.T) {
	t.Parallel()
	r := newFaultRig(t)
	cmd, exited := r.start("all")
	flooded := r.floodUntilRetrying()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited
	t.Logf("killed with %d events produced and %d requests received", r.produced.Load(), len(r.recv.Received()))
	inFlight := r.slow.Load()
	cmd, exited = r.start("all")
	// Attempts in flight at the kill reached the farm, but their claims
	// were never written back: the restarted process re-claims them when
	// their lease ends and sends them again, with the same id.
	if dups := r.checkEverything(flooded); dups == 0 {
		t.Fatalf("no pair was delivered twice although %d attempts were in flight at the kill: leased claims were not re-sent", inFlight)
	}
	stopProcess(t, cmd, exited)
}

// SIGKILL redis-server while retries are claimed and written back, and
// start it again from its AOF.
func TestRedisRestartLosesNothing(t *testing.T) {
	t.Parallel()
	r := newFaultRig(t)
	cmd, exited := r.start("all")
	flooded := r.floodUntilRetrying()
	r.redis.Kill()
	// An outage, not a blip: geckohook must see Redis gone before it returns.
	testenv.WaitFor(t, 10*time.Second, func() error {
		if code, _, err := get("http://" + r.apiAddr + "/healthz"); err != nil || code == 200 {
			return fmt.Errorf("geckohook still reports healthy with redis-server killed: %d %v", code, err)
		}
		return nil
	})
	r.redis.Restart()
	t.Logf("redis restarted with %d events produced and %d requests received", r.produced.Load(), len(r.recv.Received()))
	r.checkEverything(flooded)
	stopProcess(t, cmd, exited)
}

// Two dispatchers share the partitions; one stops (SIGTERM: drain, hand
// back unfinished claims) while retries are under way, and the other takes
// over its partitions and their retry queues.
func TestRebalanceHandsOverRetryQueues(t *testing.T) {
	t.Parallel()
	r := newFaultRig(t)
	cmd, exited := r.start("all")
	second, secondExited := r.start("dispatcher")
	// The second dispatcher must hold partitions before the flood.
	testenv.WaitFor(t, 30*time.Second, func() error {
		_, metrics, err := get("http://" + r.apiAddr + "/metrics")
		if err != nil || !strings.Contains(metrics, "geckohook_shards 2\n") {
			return fmt.Errorf("first process does not hold half the partitions yet (%v)", err)
		}
		return nil
	})
	flooded := r.floodUntilRetrying()
	stopProcess(t, second, secondExited)
	testenv.WaitFor(t, 30*time.Second, func() error {
		_, metrics, err := get("http://" + r.apiAddr + "/metrics")
		if err != nil || !strings.Contains(metrics, fmt.Sprintf("geckohook_shards %d\n", faultPartitions)) {
			return fmt.Errorf("remaining process has not taken every partition (%v)", err)
		}
		return nil
	})
	r.checkEverything(flooded)
	stopProcess(t, cmd, exited)
}
