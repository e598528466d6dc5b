package main

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
)

// TestCoordinatorInAll runs `geckohook all` as `make run` does (embedded
// Kafka and Redis): a 410 is recorded as a deletion by the coordinator, a
// 500 puts the webhook in the failing set, and a separate `geckohook
// coordinator` joins the same group.
func TestCoordinatorInAll(t *testing.T) {
	recv, err := loadtest.NewReceiver(func(path string, _ int) int {
		if strings.HasPrefix(path, "/gone") {
			return 410
		}
		return 500
	})
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	kafkaAddr, apiAddr := freeAddr(t), freeAddr(t)
	outbox := t.TempDir()
	cmd, out, exited := startProcess(t, "all", "--embedded-kafka-listen", kafkaAddr, "--api-listen", apiAddr,
		"--partitions", "2", "--log-format", "json", "--mail-outbox", outbox, "--sweep-every", "100ms")
	base := "http://" + apiAddr
	var adminToken, redisAddr string
	testenv.WaitFor(t, 30*time.Second, func() error {
		if m := regexp.MustCompile(`admin token [^\n]*: (\S+)`).FindStringSubmatch(out.String()); m != nil {
			adminToken = m[1]
		}
		if m := regexp.MustCompile(`embedded Redis listening on (\S+)`).FindStringSubmatch(out.String()); m != nil {
			redisAddr = m[1]
		}
		if adminToken == "" || redisAddr == "" || !strings.Contains(out.String(), "coordinator running") {
			return fmt.Errorf("not started yet")
		}
		code, _, err := get(base + "/healthz")
		if err != nil || code != 200 {
			return fmt.Errorf("healthz %d %v", code, err)
		}
		return nil
	})
	if !strings.Contains(out.String(), "daily digests are written into "+outbox) {
		t.Error("outbox not announced")
	}
	code, body := apiCall(t, "POST", base+"/v1/applications", adminToken, `{"application":{"name":"Shop","developer_email":"dev@example.com"}}`)
	if code != 201 {
		t.Fatalf("create application: %d %v", code, body)
	}
	appToken := body["application"].(map[string]any)["token"].(string)
	ids := map[string]string{}
	for _, path := range []string{"/gone", "/fail"} {
		code, body := apiCall(t, "POST", base+"/v1/webhooks", appToken,
			`{"webhook":{"account_id":"acc-1","event":"order.create","address":"`+recv.URL+path+`"}}`)
		if code != 201 {
			t.Fatalf("create webhook: %d %v", code, body)
		}
		ids[path] = body["webhook"].(map[string]any)["id"].(string)
	}
	if code, body := apiCall(t, "POST", base+"/v1/events", appToken, `{"event":{"account_id":"acc-1","event":"order.create","object_id":1}}`); code != 202 {
		t.Fatalf("ingest: %d %v", code, body)
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	testenv.WaitFor(t, 20*time.Second, func() error {
		_, metrics, err := get(base + "/metrics")
		if err != nil {
			return err
		}
		for _, want := range []string{`geckohook_webhooks_deleted_total{reason="gone"} 1`, `geckohook_coordinator_outcomes_total{result="applied"} 2`,
			`geckohook_outcomes_total{fate="published"} 2`} {
			if !strings.Contains(metrics, want) {
				return fmt.Errorf("/metrics lacks %s", want)
			}
		}
		if _, err := rdb.ZScore(context.Background(), "gh:failing", ids["/fail"]).Result(); err != nil {
			return fmt.Errorf("failing webhook not in gh:failing: %v", err)
		}
		return nil
	})
	app, n := mustAppID(t, rdb), int64(0)
	for _, day := range []string{time.Now().UTC().Format(time.DateOnly), time.Now().UTC().Add(-time.Minute).Format(time.DateOnly)} {
		if k, _ := rdb.HLen(context.Background(), "gh:day:{"+day+"}:deleted:"+app).Result(); k > n {
			n = k // the deletion's day (a run across midnight checks both)
		}
	}
	if n != 1 {
		t.Errorf("today's deletion record holds %d webhooks, want the 410 one", n)
	}

	// A separate coordinator process joins the group and serves /metrics.
	metricsAddr := freeAddr(t)
	c2, out2, exited2 := startProcess(t, "coordinator", "--kafka-brokers", kafkaAddr, "--redis-addr", redisAddr,
		"--metrics-listen", metricsAddr, "--mail-outbox", outbox, "--log-format", "json", "--kafka-session-timeout", "6s")
	testenv.WaitFor(t, 20*time.Second, func() error {
		code, metrics, err := get("http://" + metricsAddr + "/metrics")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("metrics %d %v", code, err)
		}
		if !strings.Contains(metrics, "geckohook_digests_total") {
			return fmt.Errorf("coordinator metrics missing")
		}
		return nil
	})
	for i, proc := range []struct {
		exited chan error
		signal func() error
	}{{exited2, func() error { return c2.Process.Signal(syscall.SIGTERM) }}, {exited, func() error { return cmd.Process.Signal(syscall.SIGTERM) }}} {
		if err := proc.signal(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-proc.exited:
			if err != nil {
				t.Fatalf("process %d exited with %v", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("process %d did not stop within 30s", i)
		}
	}
	for _, o := range []string{out.String(), out2.String()} {
		if !strings.Contains(o, `"part":"coordinator","took_ms"`) {
			t.Error("the coordinator was not stopped in order")
		}
	}
}

func mustAppID(t *testing.T, rdb *redis.Client) string {
	t.Helper()
	ids, err := rdb.HKeys(context.Background(), "gh:apps").Result()
	if err != nil || len(ids) != 1 {
		t.Fatalf("applications %v, %v", ids, err)
	}
	return ids[0]
}

func runBinary(args ...string) (string, error) {
	out, err := exec.Command(binary, args...).CombinedOutput()
	return string(out), err
}

func TestCoordinatorCommandLineErrors(t *testing.T) {
	for want, args := range map[string][]string{
		"--kafka-brokers is required": {"coordinator", "--redis-addr", "127.0.0.1:1"},
		"bad --mail-at":               {"coordinator", "--mail-at", "25:00"},
		"--delete-after":              {"all", "--delete-after", "0s"},
	} {
		out, err := runBinary(args...)
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("geckohook %v: err %v, output %q; want failure mentioning %q", args, err, out, want)
		}
	}
}
