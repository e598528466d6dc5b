// Command geckohook is the webhook delivery proxy: one binary whose
// subcommands run each role (dispatcher, api), all of them in one process
// (all), or the embedded Kafka broker alone (broker).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/api"
	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/dispatch"
	"github.com/geckohook/geckohook/engine/embedded"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/engine/publish"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const usage = `geckohook: sharded webhook delivery proxy (Kafka in, signed HTTP POSTs out).

Usage: geckohook <command> [flags]

Commands:
  all          every role in one process; with no --kafka-brokers / --redis-addr
               it starts an embedded Kafka and Redis (for trying it, not production)
  dispatcher   consume events and deliver webhooks (needs Kafka and Redis)
  api          management API and event ingest (needs Kafka and Redis)
  coordinator  failure counters, the 3-day deletion rule and the daily mail
               (needs Kafka and Redis)
  broker       the embedded Kafka broker alone (trials, tests, benchmarks)
  version      print the version

Run "geckohook <command> -h" for the flags. Every flag can also be set as
GECKOHOOK_<FLAG> (e.g. GECKOHOOK_KAFKA_BROKERS) or in the --config YAML file;
the command line wins, then the environment, then the file.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd := args[0]
	switch cmd {
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "geckohook %s\n", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "all", "dispatcher", "api", "broker", "coordinator":
	default:
		fmt.Fprintf(stderr, "geckohook: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	c, fs, err := parseConfig(cmd, args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "geckohook %s: %v\n", cmd, err)
		if fs != nil && !strings.Contains(err.Error(), "flag provided but not defined") {
			fmt.Fprintf(stderr, "Run \"geckohook %s -h\" for the flags.\n", cmd)
		}
		return 2
	}
	log, err := newLogger(c, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "geckohook: %v\n", err)
		return 2
	}
	sender.Version = version
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cmd == "broker" {
		err = runBroker(ctx, c, log, stdout)
	} else {
		err = serve(ctx, cmd, c, log, stdout)
	}
	if err != nil {
		log.Error().Err(err).Msg("geckohook stopped with an error")
		return 1
	}
	return 0
}

func newLogger(c *config, w io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(c.LogLevel)
	if err != nil || c.LogLevel == "" {
		return zerolog.Logger{}, fmt.Errorf("bad --log-level %q (debug, info, warn, error)", c.LogLevel)
	}
	switch c.LogFormat {
	case "json":
	case "console":
		color := false
		if f, ok := w.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("NO_COLOR") == "" {
				color = true
			}
		}
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000", NoColor: !color}
	default:
		return zerolog.Logger{}, fmt.Errorf("bad --log-format %q (console, json)", c.LogFormat)
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// closer is one started part, stopped in reverse order at shutdown.
type closer struct {
	name string
	fn   func()
}

func runBroker(ctx context.Context, c *config, log zerolog.Logger, stdout io.Writer) error {
	k, err := embedded.StartKafka(embedded.KafkaOptions{Listen: c.EmbeddedKafka, Partitions: c.Partitions, DataDir: c.DataDir})
	if err != nil {
		return err
	}
	defer k.Close()
	if err := kafkaio.EnsureTopics(ctx, []string{k.Addr()}, topics(c)...); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "embedded Kafka broker listening on %s (for trials and tests, not production data)\n", k.Addr())
	log.Info().Str("addr", k.Addr()).Str("data_dir", c.DataDir).Msg("embedded Kafka broker running")
	<-ctx.Done()
	log.Info().Msg("stopping embedded Kafka broker")
	return nil
}

func topics(c *config) []kafkaio.Topic {
	return []kafkaio.Topic{
		{Name: c.EventsTopic, Partitions: c.Partitions, ReplicationFactor: c.Replication},
		{Name: c.DLQTopic, Partitions: 1, ReplicationFactor: c.Replication},
		{Name: c.OutcomesTopic, Partitions: c.Partitions, ReplicationFactor: c.Replication},
	}
}

func serve(ctx context.Context, role string, c *config, log zerolog.Logger, stdout io.Writer) (err error) {
	var closers []closer
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			start := time.Now()
			closers[i].fn()
			log.Info().Str("part", closers[i].name).Dur("took", time.Since(start)).Msg("stopped")
		}
	}()

	brokers, redisAddrs := splitList(c.KafkaBrokers), splitList(c.RedisAddr)
	embeddedMode := false
	if len(brokers) == 0 {
		if role != "all" {
			return fmt.Errorf("--kafka-brokers is required for %s (only `all` starts an embedded Kafka)", role)
		}
		k, err := embedded.StartKafka(embedded.KafkaOptions{Listen: c.EmbeddedKafka, Partitions: c.Partitions, DataDir: c.DataDir})
		if err != nil {
			return err
		}
		closers = append(closers, closer{"embedded Kafka", k.Close})
		brokers = []string{k.Addr()}
		embeddedMode = true
		fmt.Fprintf(stdout, "embedded Kafka listening on %s (for trying geckohook, not for production data)\n", k.Addr())
	}
	if len(redisAddrs) == 0 {
		if role != "all" {
			return fmt.Errorf("--redis-addr is required for %s (only `all` starts an embedded Redis)", role)
		}
		r, err := embedded.StartRedis(c.EmbeddedRedis)
		if err != nil {
			return err
		}
		closers = append(closers, closer{"embedded Redis", r.Close})
		redisAddrs = []string{r.Addr()}
		embeddedMode = true
		fmt.Fprintf(stdout, "embedded Redis listening on %s (in memory: for trying geckohook, not for production data)\n", r.Addr())
	}
	if embeddedMode {
		if c.set["allow-private-targets"] == "" {
			c.AllowPrivate = true
		}
		if c.set["allow-http"] == "" {
			c.AllowHTTP = true
		}
		if c.AdminToken == "" {
			b := make([]byte, 24)
			_, _ = rand.Read(b)
			c.AdminToken = "gha_" + base64.RawURLEncoding.EncodeToString(b)
			fmt.Fprintf(stdout, "admin token (generated for this run; set --admin-token to choose one): %s\n", c.AdminToken)
		}
	}
	if c.AllowPrivate || c.AllowHTTP {
		log.Warn().Bool("allow_private_targets", c.AllowPrivate).Bool("allow_http", c.AllowHTTP).
			Msg("webhooks may target private addresses and/or plain http: fine for a trial, never in production")
	}

	cat, err := catalog.Load(c.EventsCatalog)
	if err != nil {
		return err
	}
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: redisAddrs, Password: c.RedisPassword})
	closers = append(closers, closer{"redis client", func() { _ = rdb.Close() }})
	if err := waitRedis(ctx, rdb, log); err != nil {
		return err
	}
	if err := kafkaio.EnsureTopics(ctx, brokers, topics(c)...); err != nil {
		return err
	}

	regCtx, stopReg := context.WithCancel(context.Background())
	reg := registry.New(rdb, registry.Options{Prefix: c.RedisPrefix, Log: log.With().Str("part", "registry").Logger()})
	if err := reg.Start(regCtx); err != nil {
		stopReg()
		return err
	}
	closers = append(closers, closer{"registry", func() { stopReg(); <-reg.Done() }})
	apps, hooks := reg.Counts()
	log.Info().Int("applications", apps).Int("webhooks", hooks).Msg("registry loaded")

	policy := netguard.Policy{AllowPrivate: c.AllowPrivate, AllowHTTP: c.AllowHTTP}
	failed := make(chan error, 8) // a part that stops on its own stops the process
	// startPart runs fn until the shutdown stops it; if it returns before,
	// the process shuts down with its error.
	startPart := func(name string, fn func(ctx context.Context) error) {
		pctx, stop := context.WithCancel(context.Background())
		late := make(chan error, 1)
		go func() {
			err := fn(pctx)
			if pctx.Err() == nil {
				failed <- fmt.Errorf("%s stopped by itself: %v", name, err)
				err = nil
			}
			late <- err
		}()
		closers = append(closers, closer{name, func() {
			stop()
			if err := <-late; err != nil {
				log.Error().Err(err).Str("part", name).Msg("error while stopping")
			}
		}})
	}
	// serveAPI serves a on addr as a part of the process.
	serveAPI := func(name, addr string, a *api.API) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("cannot listen for the %s on %s: %w", name, addr, err)
		}
		startPart(name, func(ctx context.Context) error { return a.Serve(ctx, ln) })
		fmt.Fprintf(stdout, "%s listening on http://%s\n", name, ln.Addr())
		return nil
	}
	health := func(ctx context.Context) error { return rdb.Ping(ctx).Err() }
	if c.PprofListen != "" {
		ln, err := net.Listen("tcp", c.PprofListen)
		if err != nil {
			return fmt.Errorf("cannot listen for profiles on %s: %w", c.PprofListen, err)
		}
		startPart("profiles", func(ctx context.Context) error { return ops.ServeProfiles(ctx, ln) })
		fmt.Fprintf(stdout, "profiles listening on http://%s/debug/pprof/\n", ln.Addr())
	}

	var d *dispatch.Dispatcher
	var pub *publish.Publisher
	var coordMetrics func(*bytes.Buffer)
	metrics := func(b *bytes.Buffer) {
		if d != nil {
			d.WriteMetrics(b)
		}
		pub.WriteMetrics(b)
		if coordMetrics != nil {
			coordMetrics(b)
		}
	}
	if role == "all" || role == "coordinator" {
		if coordMetrics, err = startCoordinator(c, brokers, rdb, reg, log, stdout, startPart); err != nil {
			return err
		}
	}
	if role == "all" || role == "dispatcher" {
		// Closed after the dispatcher drained, so its last outcomes go out.
		pub = newOutcomes(c, brokers, rdb, log)
		closers = append(closers, closer{"outcomes publisher", func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := pub.Close(ctx); err != nil {
				log.Warn().Err(err).Msg("outcomes not all flushed")
			}
		}})
		d = dispatch.New(dispatch.Options{
			Brokers: brokers, Topic: c.EventsTopic, DLQTopic: c.DLQTopic, Group: c.Group,
			Registry: reg, Catalog: cat, Redis: rdb, RedisPrefix: c.RedisPrefix, ResourceBase: c.ResourceBase,
			Sender: sender.New(sender.Options{
				Policy: policy, Timeout: c.RequestTimeout, MaxConnsPerHost: c.MaxConnsPerHost,
				DeliveryHeader: c.DeliveryHeader, SignatureHeader: c.SignatureHeader,
			}),
			Workers: c.Workers, Window: c.Window, MaxRetries: maxRetries(c.MaxRetries),
			Lease: c.RetryLease, RetryWindow: c.RetryWindow, Outcomes: pub,
			DeadRetention: c.DeadRetention, DeadMax: c.DeadMax,
			DrainTimeout: c.RequestTimeout + 5*time.Second, SessionTimeout: c.KafkaSession,
			Log: log.With().Str("part", "dispatcher").Logger(),
		})
		startPart("dispatcher (drained)", d.Run)
		log.Info().Strs("brokers", brokers).Str("topic", c.EventsTopic).Str("group", c.Group).Msg("dispatcher running")
	}
	if (role == "dispatcher" || role == "coordinator") && c.MetricsListen != "" {
		srv := ops.New(ops.Options{Health: health, Metrics: metrics, Log: log.With().Str("part", "metrics").Logger()})
		ln, err := net.Listen("tcp", c.MetricsListen)
		if err != nil {
			return fmt.Errorf("cannot listen for the metrics and health endpoint on %s: %w", c.MetricsListen, err)
		}
		startPart("metrics and health endpoint", func(ctx context.Context) error { return srv.Serve(ctx, ln) })
		fmt.Fprintf(stdout, "metrics and health endpoint listening on http://%s\n", ln.Addr())
	}
	if role == "all" || role == "api" {
		w := kafkaio.NewWriter(brokers, c.EventsTopic)
		closers = append(closers, closer{"event writer", func() { _ = w.Close() }})
		a := api.New(api.Options{
			Registry: reg, Catalog: cat, Policy: policy, Lookup: netguard.SystemLookup, AdminToken: c.AdminToken,
			Produce: func(ctx context.Context, key, value []byte) error {
				return w.WriteMessages(ctx, kafka.Message{Key: key, Value: value})
			},
			Health: health, Metrics: metrics, Deliveries: shard.NewStore(rdb, c.RedisPrefix),
			Log: log.With().Str("part", "api").Logger(),
		})
		if err := serveAPI("management API", c.APIListen, a); err != nil {
			return err
		}
	}
	log.Info().Str("role", role).Str("version", version).Msg("geckohook running; Ctrl-C or SIGTERM to stop")
	select {
	case <-ctx.Done():
	case err := <-failed:
		log.Error().Err(err).Msg("a part stopped; shutting down")
		return err
	}
	// A second Ctrl-C or SIGTERM now ends the process at once.
	signal.Reset(os.Interrupt, syscall.SIGTERM)
	log.Info().Msg("shutting down: draining in-flight deliveries")
	return nil
}

// maxRetries maps --max-retries to dispatch.Options, where 0 means the
// default and a negative number none.
func maxRetries(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// waitRedis pings until Redis answers or ctx ends.
func waitRedis(ctx context.Context, rdb redis.UniversalClient, log zerolog.Logger) error {
	var last error
	ping := func() error {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		last = rdb.Ping(pctx).Err()
		return last
	}
	if !backoff.Retry(ctx, 100*time.Millisecond, 5*time.Second, ping, func(err error, _ time.Duration) {
		log.Warn().Err(err).Msg("waiting for Redis")
	}) {
		return fmt.Errorf("redis not reachable: %w", last)
	}
	return nil
}
