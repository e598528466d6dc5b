// Package embedded starts the in-process Kafka broker (franz-go's kfake,
// speaking the real Kafka protocol on a TCP port) and the in-process Redis
// (miniredis) that `geckohook all` uses when no real ones are configured.
// Both are for trying geckohook and for tests: kfake has no replication and
// miniredis no persistence, so neither is for production data.
package embedded

import (
	"fmt"
	"net"
	"strconv"

	"github.com/alicebob/miniredis/v2"
	"github.com/twmb/franz-go/pkg/kfake"
)

// Kafka is a running embedded Kafka broker.
type Kafka struct {
	cluster *kfake.Cluster
}

// KafkaOptions configure StartKafka.
type KafkaOptions struct {
	// Listen is host:port for the broker; port 0 picks a free one.
	Listen string
	// Partitions is the default partition count of topics created with -1
	// partitions or auto-created (default 8).
	Partitions int
	// DataDir, when set, keeps the broker's log on disk across restarts.
	DataDir string
}

// StartKafka starts a one-broker embedded Kafka cluster.
func StartKafka(o KafkaOptions) (*Kafka, error) {
	host, portStr, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("bad embedded Kafka listen address %q: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("bad embedded Kafka port in %q", o.Listen)
	}
	if o.Partitions <= 0 {
		o.Partitions = 8
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, portStr))
		}),
		kfake.DefaultNumPartitions(o.Partitions),
		kfake.AllowAutoTopicCreation(),
	}
	if o.DataDir != "" {
		opts = append(opts, kfake.DataDir(o.DataDir), kfake.SyncWrites())
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot start embedded Kafka on %s: %w", o.Listen, err)
	}
	return &Kafka{cluster: c}, nil
}

// Addr returns the broker's host:port.
func (k *Kafka) Addr() string { return k.cluster.ListenAddrs()[0] }

// Close stops the broker.
func (k *Kafka) Close() { k.cluster.Close() }

// Redis is a running embedded Redis.
type Redis struct {
	m *miniredis.Miniredis
}

// StartRedis starts miniredis on listen (host:port, port 0 for a free one).
func StartRedis(listen string) (*Redis, error) {
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr(listen); err != nil {
		return nil, fmt.Errorf("cannot start embedded Redis on %s: %w", listen, err)
	}
	return &Redis{m: m}, nil
}

// Addr returns the server's host:port.
func (r *Redis) Addr() string { return r.m.Addr() }

// Close stops the server.
func (r *Redis) Close() { r.m.Close() }
