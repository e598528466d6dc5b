package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/loadtest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "geckohook-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "geckohook")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot build geckohook: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a process's output safely.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}

func apiCall(t *testing.T, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m
}

// TestAllInOneProcess runs `geckohook all` the way `make run` does (embedded
// Kafka, and either embedded or real Redis), walks the README's walkthrough
// through the API and kcat, and stops it with SIGTERM.
func TestAllInOneProcess(t *testing.T) {
	kcat := testenv.Tool(t, "kcat")
	for _, realRedis := range []bool{false, true} {
		t.Run(map[bool]string{false: "embedded redis", true: "real redis"}[realRedis], func(t *testing.T) {
			recv, err := loadtest.NewReceiver(loadtest.Always(200))
			if err != nil {
				t.Fatal(err)
			}
			defer recv.Close()
			kafkaAddr, apiAddr := freeAddr(t), freeAddr(t)
			args := []string{"all", "--embedded-kafka-listen", kafkaAddr, "--api-listen", apiAddr, "--partitions", "2", "--log-format", "json"}
			if realRedis {
				args = append(args, "--redis-addr", testenv.Redis(t).Addr)
			}
			cmd, out, exited := startProcess(t, args...)

			base := "http://" + apiAddr
			var adminToken string
			testenv.WaitFor(t, 30*time.Second, func() error {
				for _, line := range strings.Split(out.String(), "\n") {
					if i := strings.Index(line, "admin token"); i >= 0 {
						adminToken = line[strings.LastIndex(line, " ")+1:]
					}
				}
				if adminToken == "" {
					return fmt.Errorf("no admin token printed yet")
				}
				resp, err := http.Get(base + "/healthz")
				if err != nil {
					return err
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("healthz %d", resp.StatusCode)
				}
				return nil
			})
			if !strings.Contains(out.String(), "embedded Kafka listening on "+kafkaAddr) {
				t.Errorf("embedded Kafka address not printed")
			}

			code, body := apiCall(t, "POST", base+"/v1/applications", adminToken, `{"application":{"name":"Shop","developer_email":"dev@example.com"}}`)
			if code != 201 {
				t.Fatalf("create application: %d %v", code, body)
			}
			app := body["application"].(map[string]any)
			appToken, secret := app["token"].(string), app["secret"].(string)
			recv.Expect("/hooks", secret)
			code, body = apiCall(t, "POST", base+"/v1/webhooks", appToken,
				`{"webhook":{"account_id":"acc-1","event":"fulfillments.create","address":"`+recv.URL+`/hooks"}}`)
			if code != 201 {
				t.Fatalf("create webhook: %d %v", code, body)
			}

			// An event written by kcat, an independent Kafka client.
			kc := exec.Command(kcat, "-b", kafkaAddr, "-t", "geckohook.events", "-P", "-k", "acc-1")
			kc.Stdin = strings.NewReader(`{"account_id":"acc-1","event":"fulfillments.create","object_id":1234567,"timestamp":1546272000}` + "\n")
			if o, err := kc.CombinedOutput(); err != nil {
				t.Fatalf("kcat: %v: %s", err, o)
			}
			// And one through the API's ingest endpoint.
			if code, body := apiCall(t, "POST", base+"/v1/events", appToken,
				`{"event":{"account_id":"acc-1","event":"fulfillments.create","object_id":7,"timestamp":1546272001}}`); code != 202 {
				t.Fatalf("ingest event: %d %v", code, body)
			}
			testenv.WaitFor(t, 20*time.Second, func() error {
				if n := len(recv.Received()); n < 2 {
					return fmt.Errorf("receiver got %d of 2", n)
				}
				return nil
			})
			want := map[string]bool{
				`{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json"}`: true,
				`{"object_id":7,"event":"fulfillments.create","timestamp":1546272001,"resource_url":"https://api.tradegecko.com/fulfillments/7.json"}`:             true,
			}
			for _, r := range recv.Received() {
				if !want[string(r.Body)] || !r.ValidSig {
					t.Errorf("unexpected delivery: body %s, valid signature %v", r.Body, r.ValidSig)
				}
			}
			// The receiver records a request before the dispatcher has
			// read the answer and counted it: poll.
			testenv.WaitFor(t, 10*time.Second, func() error {
				_, metrics, err := get(base + "/metrics")
				if err != nil {
					return err
				}
				if !strings.Contains(metrics, `geckohook_deliveries_total{outcome="success"} 2`) {
					return fmt.Errorf("/metrics does not count the 2 deliveries:\n%s", metrics)
				}
				return nil
			})
			if strings.Contains(out.String(), secret) || strings.Contains(out.String(), appToken) {
				t.Error("the log contains an application secret or token")
			}

			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("geckohook exited with %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("geckohook did not stop within 30s of SIGTERM")
			}
			if !strings.Contains(out.String(), "dispatcher (drained)") {
				t.Error("shutdown did not report the dispatcher drained")
			}
		})
	}
}

func TestCommandLineErrors(t *testing.T) {
	f := func(want string, args ...string) {
		t.Helper()
		out, err := exec.Command(binary, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("geckohook %v: err %v, output %q; want failure mentioning %q", args, err, out, want)
		}
	}
	f("unknown command", "frobnicate")
	f("--kafka-brokers is required", "dispatcher", "--redis-addr", "127.0.0.1:1")
	f("--redis-addr is required", "api", "--kafka-brokers", "127.0.0.1:1")
	f("bad --log-level", "all", "--log-level", "loud")
	out, err := exec.Command(binary, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "geckohook ") {
		t.Errorf("version: %v %q", err, out)
	}
}

// startProcess runs the geckohook binary until the test ends.
func startProcess(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer, chan error) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	// Settings come from the arguments alone, not from the caller's
	// GECKOHOOK_* variables (an unset admin token must be generated).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GECKOHOOK_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("geckohook %v output:\n%s", args, out.String())
		}
	})
	return cmd, &out, exited
}

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestSeparateRoles runs a deployment's shape on one machine: the embedded
// broker alone, an api process and a dispatcher process against it and a
// real redis-server.
func TestSeparateRoles(t *testing.T) {
	begun := time.Now()
	redisAddr := testenv.Redis(t).Addr
	recv, err := loadtest.NewReceiver(loadtest.Always(200))
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	kafkaAddr, apiAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	_, brokerOut, _ := startProcess(t, "broker", "--embedded-kafka-listen", kafkaAddr, "--partitions", "2")
	testenv.WaitFor(t, 20*time.Second, func() error {
		if !strings.Contains(brokerOut.String(), "listening on "+kafkaAddr) {
			return fmt.Errorf("broker not up")
		}
		return nil
	})
	common := []string{"--kafka-brokers", kafkaAddr, "--redis-addr", redisAddr, "--allow-private-targets", "--allow-http", "--log-format", "json"}
	apiCmd, _, apiExited := startProcess(t, append([]string{"api", "--api-listen", apiAddr, "--admin-token", "admin-secret"}, common...)...)
	dispCmd, _, dispExited := startProcess(t, append([]string{"dispatcher", "--metrics-listen", metricsAddr, "--kafka-session-timeout", "10s"}, common...)...)
	base := "http://" + apiAddr
	testenv.WaitFor(t, 30*time.Second, func() error {
		for _, u := range []string{base + "/healthz", "http://" + metricsAddr + "/healthz"} {
			if code, _, err := get(u); err != nil || code != 200 {
				return fmt.Errorf("%s: %d %v", u, code, err)
			}
		}
		return nil
	})
	code, body := apiCall(t, "POST", base+"/v1/applications", "admin-secret", `{"application":{"name":"Shop","developer_email":"dev@example.com"}}`)
	if code != 201 {
		t.Fatalf("create application: %d %v", code, body)
	}
	app := body["application"].(map[string]any)
	recv.Expect("/roles", app["secret"].(string))
	code, body = apiCall(t, "POST", base+"/v1/webhooks", app["token"].(string),
		`{"webhook":{"account_id":"acc-9","event":"order.create","address":"`+recv.URL+`/roles"}}`)
	if code != 201 {
		t.Fatalf("create webhook: %d %v", code, body)
	}
	hookID := body["webhook"].(map[string]any)["id"].(string)
	// The dispatcher learns of the webhook through Redis; keep sending
	// events until one arrives (events before that have no webhook yet).
	testenv.WaitFor(t, 30*time.Second, func() error {
		if n := len(recv.Received()); n > 0 {
			return nil
		}
		if code, body := apiCall(t, "POST", base+"/v1/events", app["token"].(string),
			`{"event":{"account_id":"acc-9","event":"order.create","object_id":5}}`); code != 202 {
			return fmt.Errorf("ingest: %d %v", code, body)
		}
		return fmt.Errorf("nothing received yet")
	})
	// The api process sends tests itself, and queues a recovery for the
	// dispatcher process: what arrived comes again with the same ids.
	token := app["token"].(string)
	if code, body := apiCall(t, "POST", base+"/v1/webhooks/"+hookID+"/test", token, ""); code != 200 ||
		body["test"].(map[string]any)["outcome"] != "success" {
		t.Fatalf("test send: %d %v", code, body)
	}
	delivered := map[string]bool{}
	for _, r := range recv.Received() {
		if !strings.Contains(string(r.Body), "webhook.test") {
			delivered[r.DeliveryID] = true
		}
	}
	code, body = apiCall(t, "POST", base+"/v1/webhooks/"+hookID+"/recover", token,
		`{"since":"`+begun.Add(-time.Minute).UTC().Format(time.RFC3339)+`"}`)
	if code != 202 {
		t.Fatalf("recover: %d %v", code, body)
	}
	recID := body["recovery"].(map[string]any)["id"].(string)
	testenv.WaitFor(t, 30*time.Second, func() error {
		code, body := apiCall(t, "GET", base+"/v1/recoveries/"+recID, token, "")
		if rec, _ := body["recovery"].(map[string]any); code != 200 || rec["state"] != "done" || rec["queued"].(float64) < 1 {
			return fmt.Errorf("recovery: %d %v", code, body)
		}
		return nil
	})
	testenv.WaitFor(t, 30*time.Second, func() error {
		seen := map[string]int{}
		for _, r := range recv.Received() {
			if seen[r.DeliveryID]++; delivered[r.DeliveryID] && seen[r.DeliveryID] == 2 {
				return nil
			}
		}
		return fmt.Errorf("no delivery came again after the recovery")
	})
	for _, r := range recv.Received() {
		if !r.ValidSig {
			t.Errorf("invalid signature on %s", r.Body)
		}
	}
	_, metrics, err := get("http://" + metricsAddr + "/metrics")
	if err != nil || !strings.Contains(metrics, "geckohook_shards 2") || strings.Contains(metrics, `geckohook_deliveries_total{outcome="success"} 0`) {
		t.Errorf("dispatcher metrics (%v):\n%s", err, metrics)
	}
	// Each role's listener answers the orchestrator's probes.
	for _, url := range []string{base + "/readyz", "http://" + metricsAddr + "/readyz", "http://" + metricsAddr + "/healthz"} {
		if code, body, err := get(url); err != nil || code != 200 || body != `{"status":"ok"}`+"\n" {
			t.Errorf("%s: %d %q (%v)", url, code, body, err)
		}
	}
	for _, name := range []string{`geckohook_attempt_duration_seconds_count{outcome="success"}`, "geckohook_delivery_latency_seconds_count",
		`geckohook_consumer_lag{topic="geckohook.events",partition="0"}`, "geckohook_redis_up 1", "geckohook_registry_webhooks 1",
		"geckohook_hosts_throttled", "geckohook_offset_commit_failures_total", "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(metrics, name) {
			t.Errorf("dispatcher metrics lack %s", name)
		}
	}
	for name, p := range map[string]struct {
		cmd    *exec.Cmd
		exited chan error
	}{"api": {apiCmd, apiExited}, "dispatcher": {dispCmd, dispExited}} {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.exited:
			if err != nil {
				t.Errorf("%s exited with %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30s of SIGTERM", name)
		}
	}
}
