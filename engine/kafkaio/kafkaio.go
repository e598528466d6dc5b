// Package kafkaio holds geckohook's Kafka plumbing shared by every role:
// creating missing topics at start and building writers with batching set
// for low latency (kafka-go's writer otherwise waits up to a second).
package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/backoff"
)

// Topic is a topic to create when missing.
type Topic struct {
	Name       string
	Partitions int
	// ReplicationFactor; 0 or less means the broker's default.
	ReplicationFactor int
}

// EnsureTopics creates the topics that do not exist yet; existing ones are
// left as they are. It retries until ctx ends while the cluster is not
// reachable yet.
func EnsureTopics(ctx context.Context, brokers []string, topics ...Topic) error {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		rf := t.ReplicationFactor
		if rf <= 0 {
			rf = -1
		}
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t.Name, NumPartitions: t.Partitions, ReplicationFactor: rf})
	}
	var resp *kafka.CreateTopicsResponse
	var lastErr error
	create := func() error {
		resp, lastErr = client.CreateTopics(ctx, req)
		return lastErr
	}
	if !backoff.Retry(ctx, 100*time.Millisecond, 2*time.Second, create, nil) {
		return fmt.Errorf("cannot create topics on %v: %w", brokers, lastErr)
	}
	for name, terr := range resp.Errors {
		if terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
			return fmt.Errorf("cannot create topic %s: %w", name, terr)
		}
	}
	return nil
}

// NewWriter returns a writer to topic that acknowledges after all in-sync
// replicas have the batch, batching for at most a few milliseconds. Records
// are partitioned by key with murmur2, as Java producers do.
func NewWriter(brokers []string, topic string) *kafka.Writer {
	return &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Topic:        topic,
		Balancer:     &kafka.Murmur2Balancer{},
		BatchTimeout: 2 * time.Millisecond,
		BatchSize:    1000,
		RequiredAcks: kafka.RequireAll,
		MaxAttempts:  5,
		WriteTimeout: 10 * time.Second,
	}
}
