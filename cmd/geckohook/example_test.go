package main

import (
	"testing"
	"time"
)

// The shipped example must stay loadable as the flags change.
func TestExampleConfigLoads(t *testing.T) {
	c, _, err := parseConfig("dispatcher", []string{"--config", "../../configs/geckohook.example.yaml"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if c.KafkaBrokers != "kafka-1:9092,kafka-2:9092,kafka-3:9092" || c.Replication != 3 || c.LogFormat != "json" || c.RequestTimeout != 10*time.Second {
		t.Fatalf("example config read as %+v", c)
	}
}
