package main

import (
	"strings"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/retry"
	"github.com/geckohook/geckohook/internal/testenv"
)

func TestConfigPrecedenceFlagThenEnvThenFile(t *testing.T) {
	file := testenv.TempFile(t, "geckohook.yaml", []byte(`
kafka-brokers: [k1:9092, k2:9092]
redis-addr: file-redis:6379
partitions: 16
allow-http: true
request-timeout: 7s
events-topic: from-file
`))
	env := map[string]string{
		"GECKOHOOK_REDIS_ADDR":   "env-redis:6379",
		"GECKOHOOK_EVENTS_TOPIC": "from-env",
	}
	c, _, err := parseConfig("all", []string{"--config", file, "--events-topic", "from-flag"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.KafkaBrokers != "k1:9092,k2:9092" || c.Partitions != 16 || !c.AllowHTTP || c.RequestTimeout != 7*time.Second {
		t.Errorf("file values not applied: %+v", c)
	}
	if c.RedisAddr != "env-redis:6379" {
		t.Errorf("env must win over file: redis-addr %q", c.RedisAddr)
	}
	if c.EventsTopic != "from-flag" || c.DLQTopic != "from-flag.dlq" {
		t.Errorf("flag must win: topic %q, dlq %q", c.EventsTopic, c.DLQTopic)
	}
	if c.set["allow-http"] != "file" || c.set["allow-private-targets"] != "" {
		t.Errorf("set sources %v", c.set)
	}
	// Defaults the README documents.
	d, _, err := parseConfig("all", nil, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if d.APIListen != "127.0.0.1:8080" || d.EmbeddedKafka != "127.0.0.1:9092" || d.EventsTopic != "geckohook.events" ||
		d.DLQTopic != "geckohook.events.dlq" || d.Group != "geckohook-dispatchers" || d.Partitions != 8 ||
		d.RequestTimeout != 10*time.Second || d.MaxRetries != 25 || d.AllowHTTP || d.AllowPrivate {
		t.Errorf("defaults %+v", d)
	}
}

func TestConfigErrorsAreClear(t *testing.T) {
	f := func(args []string, env map[string]string, want string) {
		t.Helper()
		_, _, err := parseConfig("all", args, func(k string) string { return env[k] })
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseConfig(%v, %v) = %v, want error containing %q", args, env, err, want)
		}
	}
	bad := testenv.TempFile(t, "bad.yaml", []byte("kafka-brokerz: x\n"))
	f([]string{"--config", bad}, nil, "unknown settings kafka-brokerz")
	f([]string{"--config", "/nonexistent/geckohook.yaml"}, nil, "cannot read config file")
	f(nil, map[string]string{"GECKOHOOK_PARTITIONS": "many"}, "GECKOHOOK_PARTITIONS")
	f([]string{"--partitions", "0"}, nil, "at least 1")
	f([]string{"stray"}, nil, "unexpected arguments")
	f([]string{"--isolation-level", "committed"}, nil, "--isolation-level")
	f([]string{"--max-retry-after", "0s"}, nil, "--max-retry-after")
}

func TestMaxRetriesZeroMeansNone(t *testing.T) {
	at := time.Unix(1_800_000_000, 0)
	for flagValue, want := range map[string]retry.Write{"0": retry.Kill, "25": retry.Schedule} {
		c, _, err := parseConfig("dispatcher", []string{"--max-retries", flagValue}, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		// The dispatcher takes the flag's value as it is.
		p := retry.Policy{MaxRetries: c.MaxRetries, Rand: func(int) int { return 0 }}
		if d := p.Decide(retry.State{}, retry.Turn{Result: retry.Failed, At: at}); d.Write != want {
			t.Fatalf("--max-retries %s: a first failure gives write %d, want %d", flagValue, d.Write, want)
		}
	}
}
