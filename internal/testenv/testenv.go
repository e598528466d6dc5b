// Package testenv starts the real parts geckohook's tests run against: a
// redis-server on a free loopback port in a temp dir, the embedded Kafka on a
// free port, and checks for external tools such as kcat. When
// GECKOHOOK_REQUIRE_REDIS=1 (as in CI) a missing redis-server or kcat fails
// the test instead of skipping it.
package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/geckohook/geckohook/engine/embedded"
)

// Required reports whether missing tools must fail tests (CI) rather than
// skip them.
func Required() bool { return os.Getenv("GECKOHOOK_REQUIRE_REDIS") == "1" }

// Tool returns the path of an external tool, skipping or failing the test
// when it is missing.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if Required() {
			t.Fatalf("%s is required (GECKOHOOK_REQUIRE_REDIS=1) but not installed: run `make test`, which installs it", name)
		}
		t.Skipf("%s not installed; `make test` installs it", name)
	}
	return p
}

// RedisServer is a real redis-server started for one test.
type RedisServer struct {
	Addr string
	Dir  string
	cmd  *exec.Cmd
	args []string
	t    testing.TB
}

// Redis starts a redis-server on a free loopback port with its files in a
// temp dir; extra are additional redis-server arguments (for example
// "--appendonly", "yes"). It is killed when the test ends.
func Redis(t testing.TB, extra ...string) *RedisServer {
	t.Helper()
	bin := Tool(t, "redis-server")
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		s := &RedisServer{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Dir: dir, t: t}
		s.args = append([]string{
			"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
			"--save", "", "--protected-mode", "yes", "--daemonize", "no",
		}, extra...)
		if lastErr = s.start(bin); lastErr == nil {
			t.Cleanup(s.Kill)
			return s
		}
	}
	t.Fatalf("cannot start redis-server: %v", lastErr)
	return nil
}

func (s *RedisServer) start(bin string) error {
	cmd := exec.Command(bin, s.args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("redis-server exited: %v: %s", err, out.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			s.cmd = cmd
			go func() { <-exited }()
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return fmt.Errorf("redis-server did not answer on %s: %s", s.Addr, out.String())
}

// Kill stops the server with SIGKILL (as a crash would).
func (s *RedisServer) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		s.cmd = nil
	}
}

// Restart starts the server again on the same port and dir (after Kill).
func (s *RedisServer) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(Tool(s.t, "redis-server")); err != nil {
		s.t.Fatalf("cannot restart redis-server: %v", err)
	}
}

// Client returns a go-redis client for the server, closed at test end.
func (s *RedisServer) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Kafka starts the embedded Kafka broker on a free loopback port.
func Kafka(t testing.TB, partitions int) *embedded.Kafka {
	t.Helper()
	k, err := embedded.StartKafka(embedded.KafkaOptions{Listen: "127.0.0.1:0", Partitions: partitions})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k
}

// FreePort returns a currently free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitFor polls cond until it returns nil or timeout passes, then fails the
// test with cond's last error.
func WaitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TempFile writes data to a file in a temp dir and returns its path.
func TempFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// RedisCluster starts n redis-servers in cluster mode (masters, no
// replicas), joins them with redis-cli --cluster create, and waits until
// every slot is served. It returns the nodes' addresses.
func RedisCluster(t testing.TB, n int) []string {
	t.Helper()
	cli := Tool(t, "redis-cli")
	addrs := make([]string, n)
	for i := range addrs {
		bus, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = Redis(t, "--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
			"--cluster-node-timeout", "2000").Addr
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("cannot create the Redis cluster: %v: %s", err, out)
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer c.Close()
	WaitFor(t, 20*time.Second, func() error {
		for _, a := range addrs {
			nc := redis.NewClient(&redis.Options{Addr: a})
			info, err := nc.ClusterInfo(context.Background()).Result()
			nc.Close()
			if err != nil {
				return err
			}
			if !bytes.Contains([]byte(info), []byte("cluster_state:ok")) {
				return fmt.Errorf("node %s: cluster not ready", a)
			}
		}
		return c.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error { return m.Ping(ctx).Err() })
	})
	return addrs
}

// KafkaProducer is a franz-go client writing to topic on brokers, records
// going to the partition they name; with transactionalID set it is a real
// transactional producer. It is closed at test end.
func KafkaProducer(t testing.TB, brokers []string, topic, transactionalID string) *kgo.Client {
	t.Helper()
	opts := []kgo.Opt{kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner())}
	if transactionalID != "" {
		opts = append(opts, kgo.TransactionalID(transactionalID))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}
