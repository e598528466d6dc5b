package main

import (
	"slices"
	"testing"
)

// Each role is its rows of the parts table: this is the order they start in.
func TestRolesRunTheirParts(t *testing.T) {
	f := func(cmd string, c config, want ...string) {
		t.Helper()
		p := &process{role: roleOf(cmd), cmd: cmd, c: &c, brokers: splitList(c.KafkaBrokers), redisAddrs: splitList(c.RedisAddr)}
		var got []string
		for _, pt := range p.parts() {
			if p.runs(pt) {
				got = append(got, pt.name)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s runs\n%q\nwant\n%q", cmd, got, want)
		}
	}
	ext := config{KafkaBrokers: "k:9092", RedisAddr: "r:6379", MetricsListen: "127.0.0.1:9090"}
	common := []string{"target policy", "events catalog", "redis client", "Kafka topics", "registry"}
	f("all", config{}, append(append([]string{"embedded Kafka", "embedded Redis"}, common...),
		"coordinator", "daily mail", "outcomes publisher", "dispatcher (drained)", "event writer", "management API")...)
	f("all", config{KafkaBrokers: "k:9092", RedisAddr: "r:6379", PprofListen: "127.0.0.1:0"}, append(common,
		"profiles", "coordinator", "daily mail", "outcomes publisher", "dispatcher (drained)", "event writer", "management API")...)
	f("api", ext, append(common, "event writer", "management API")...)
	f("dispatcher", ext, append(common, "outcomes publisher", "dispatcher (drained)", "metrics and health endpoint")...)
	f("coordinator", ext, append(common, "coordinator", "daily mail", "metrics and health endpoint")...)
	f("coordinator", config{KafkaBrokers: "k:9092", RedisAddr: "r:6379"}, append(common, "coordinator", "daily mail")...)
	f("broker", ext, "embedded Kafka", "Kafka topics")
	f("broker", config{PprofListen: "127.0.0.1:0"}, "embedded Kafka", "Kafka topics", "profiles")
}
