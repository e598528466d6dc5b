package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/engine/kafkaio"
)

// config is every setting of every role. Flags (with their help text) are
// the documentation; GECKOHOOK_<FLAG> environment variables and a YAML file
// (--config) fill in what the command line leaves unset.
type config struct {
	ConfigFile string

	APIListen     string
	MetricsListen string
	PprofListen   string
	AdminToken    string
	SecretOverlap time.Duration
	PortalURL     string
	PortalSession time.Duration
	RecoverMax    int
	Partitioner   string
	KafkaBrokers  string
	EmbeddedKafka string
	DataDir       string
	EventsTopic   string
	DLQTopic      string
	Group         string
	KafkaSession  time.Duration
	Partitions    int
	Replication   int
	RedisAddr     string
	RedisPassword string
	RedisPrefix   string
	EmbeddedRedis string

	AllowPrivate  bool
	AllowHTTP     bool
	EventsCatalog string
	ResourceBase  string

	RequestTimeout  time.Duration
	Workers         int
	Window          int
	MaxConnsPerHost int
	MaxRetries      int
	MaxRetryAfter   time.Duration
	IsolationLevel  string
	RetryLease      time.Duration
	RetryWindow     int
	DeadRetention   time.Duration
	DeadMax         int
	DeliveryHeader  string
	SignatureHeader string

	LogLevel  string
	LogFormat string

	// coordinator, daily mail and outcomes (coordinator.go)
	coordinatorConfig

	// set records which flags were given a value by any source, and where.
	set map[string]string
}

// everyRole is every command that runs parts.
const everyRole = serving | roleBroker

// flagRoles is which roles use each flag. A role lists and accepts on its
// command line only its own flags; the config file and the GECKOHOOK_*
// variables may hold every role's settings, so one file or environment
// serves every process, and a role ignores the settings it does not use.
// Kafka topics are created by the roles that use their flag (topics).
var flagRoles = map[string]roles{
	"config":     everyRole,
	"log-level":  everyRole,
	"log-format": everyRole,

	"api-listen":     roleAll | roleAPI,
	"metrics-listen": roleDispatcher | roleCoordinator,
	"pprof-listen":   everyRole,
	"admin-token":    roleAll | roleAPI,
	"secret-overlap": roleAll | roleAPI,
	"portal-url":     roleAll | roleAPI,
	"portal-session": roleAll | roleAPI,
	// Test sends go through a sender like the dispatcher's (request-timeout,
	// max-conns-per-host, the header names); recovery reads the events
	// topic as the dispatcher does (isolation-level, resource-base).
	"recover-max":        roleAll | roleAPI,
	"events-partitioner": roleAll | roleAPI,

	"kafka-brokers":         serving,
	"embedded-kafka-listen": roleAll | roleBroker,
	"data-dir":              roleAll | roleBroker,
	"events-topic":          roleAll | roleAPI | roleDispatcher | roleBroker,
	"dlq-topic":             roleAll | roleDispatcher | roleBroker,
	"outcomes-topic":        roleAll | roleDispatcher | roleCoordinator | roleBroker,
	"partitions":            everyRole,
	"replication-factor":    serving,
	"consumer-group":        roleAll | roleDispatcher,
	"coordinator-group":     roleAll | roleCoordinator,
	"kafka-session-timeout": roleAll | roleDispatcher | roleCoordinator,

	"redis-addr":            serving,
	"redis-password":        serving,
	"redis-prefix":          serving,
	"embedded-redis-listen": roleAll,

	"allow-private-targets": roleAll | roleAPI | roleDispatcher,
	"allow-http":            roleAll | roleAPI | roleDispatcher,
	"events-catalog":        roleAll | roleAPI | roleDispatcher,
	"resource-base":         roleAll | roleAPI | roleDispatcher,

	"request-timeout":    roleAll | roleAPI | roleDispatcher,
	"workers":            roleAll | roleDispatcher,
	"window":             roleAll | roleDispatcher,
	"max-conns-per-host": roleAll | roleAPI | roleDispatcher,
	"max-retries":        roleAll | roleDispatcher,
	"max-retry-after":    roleAll | roleDispatcher,
	"isolation-level":    roleAll | roleAPI | roleDispatcher,
	"retry-lease":        roleAll | roleDispatcher,
	"retry-window":       roleAll | roleDispatcher,
	"dead-retention":     roleAll | roleDispatcher,
	"dead-max":           roleAll | roleDispatcher,
	"delivery-header":    roleAll | roleAPI | roleDispatcher,
	"signature-header":   roleAll | roleAPI | roleDispatcher,

	// The developer portal (api) shows health, deletions and digests by
	// the coordinators' rules and the mail's templates.
	"delete-after":   roleAll | roleAPI | roleCoordinator,
	"sweep-every":    roleAll | roleCoordinator,
	"mail-at":        roleAll | roleAPI | roleCoordinator,
	"mail-grace":     roleAll | roleCoordinator,
	"mail-outbox":    roleAll | roleCoordinator,
	"mail-templates": roleAll | roleAPI | roleCoordinator,
	"mail-from":      roleAll | roleCoordinator,
	"smtp-addr":      roleAll | roleCoordinator,
	"smtp-user":      roleAll | roleCoordinator,
	"smtp-password":  roleAll | roleCoordinator,
}

// newFlagSet defines every flag of every role on c; roleFlags picks a
// role's. A back-quoted word in a usage string is the value's name in -h
// (-api-listen addr): keep back-quotes for that alone.
func newFlagSet(cmd string, c *config) *flag.FlagSet {
	fs := flag.NewFlagSet("geckohook "+cmd, flag.ContinueOnError)
	fs.StringVar(&c.ConfigFile, "config", "", "`path` of a YAML file of settings, keys named like the flags (e.g. kafka-brokers: ...); it may hold every command's settings: those this command does not use are ignored; the command line and GECKOHOOK_* variables win over it")

	fs.StringVar(&c.APIListen, "api-listen", "127.0.0.1:8080", "`addr` (host:port) of the management API (applications, webhooks, events, /healthz, /readyz, /metrics)")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "127.0.0.1:9090", "`addr` (host:port) serving /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&c.PprofListen, "pprof-listen", "", "`addr` (host:port) serving Go's /debug/pprof/ profiles (empty: off; never expose it beyond the host)")
	fs.StringVar(&c.AdminToken, "admin-token", "", "bearer token for admin endpoints (creating applications); with embedded Kafka or Redis and none set, one is generated and printed")
	fs.DurationVar(&c.SecretOverlap, "secret-overlap", 24*time.Hour, "how long an application's old secret keeps signing and its old token keeps working after a rotation, unless the request asks for another overlap (0: retired at once)")

	fs.StringVar(&c.PortalURL, "portal-url", "", "public base URL of the developer portal, which the API serves under /portal/ and portal links start with, e.g. https://hooks.example.com (empty: http:// and the API's listen address); an https URL makes the session cookie Secure")
	fs.DurationVar(&c.PortalSession, "portal-session", 12*time.Hour, "lifetime of a developer portal session opened with a portal link")

	fs.IntVar(&c.RecoverMax, "recover-max", 10000, "most events one recovery from Kafka by time (POST /v1/webhooks/{id}/recover) may re-deliver; a larger window is refused")
	fs.StringVar(&c.Partitioner, "events-partitioner", "", "the partitioner every producer of the events topic uses, murmur2 (Java, geckohook's own ingest) or crc32 (librdkafka): a recovery then reads only the account's partition (empty: producers may differ, every partition is read)")

	fs.StringVar(&c.KafkaBrokers, "kafka-brokers", "", "comma-separated `list` of Kafka bootstrap brokers (host:port); required, except in the all command, where empty starts the embedded broker (not for production data)")
	fs.StringVar(&c.EmbeddedKafka, "embedded-kafka-listen", "127.0.0.1:9092", "`addr` (host:port) of the embedded Kafka broker (in the all command, used when --kafka-brokers is empty)")
	fs.StringVar(&c.DataDir, "data-dir", "", "`path` of the directory where the embedded Kafka keeps its log across restarts (empty: in memory only)")
	fs.StringVar(&c.EventsTopic, "events-topic", "geckohook.events", "Kafka topic producers write events to (key = account id)")
	fs.StringVar(&c.DLQTopic, "dlq-topic", "", "dead-letter topic for events that cannot be decoded or name an unknown event (default <events-topic>.dlq)")
	fs.StringVar(&c.Group, "consumer-group", "geckohook-dispatchers", "Kafka consumer group of the dispatchers")
	fs.DurationVar(&c.KafkaSession, "kafka-session-timeout", 30*time.Second, "consumer group session timeout: how long the partitions of a crashed process wait before another takes them (a graceful stop hands them over at once)")
	fs.IntVar(&c.Partitions, "partitions", 8, "partitions of the events and outcomes topics when geckohook creates them (one shard each)")
	fs.IntVar(&c.Replication, "replication-factor", 0, "replication factor of topics geckohook creates (0: the cluster's default)")

	fs.StringVar(&c.RedisAddr, "redis-addr", "", "Redis `addr` (host:port), or a comma-separated list for Redis Cluster; required, except in the all command, where empty starts the embedded Redis (not for production data)")
	fs.StringVar(&c.RedisPassword, "redis-password", "", "Redis password (prefer GECKOHOOK_REDIS_PASSWORD)")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", contract.DefaultRedisPrefix, "prefix of every Redis key")
	fs.StringVar(&c.EmbeddedRedis, "embedded-redis-listen", "127.0.0.1:0", "`addr` (host:port) of the embedded Redis (port 0: a free port, printed at start)")

	fs.BoolVar(&c.AllowPrivate, "allow-private-targets", false, "allow webhooks to loopback, private and link-local addresses (development, tests, benchmarks); on by default in the all command with embedded Kafka or Redis")
	fs.BoolVar(&c.AllowHTTP, "allow-http", false, "allow plain http:// webhook addresses besides https://; on by default in the all command with embedded Kafka or Redis")
	fs.StringVar(&c.EventsCatalog, "events-catalog", "", "`path` of a YAML event catalog (event name: resource path) replacing the built-in configs/events.yaml")
	fs.StringVar(&c.ResourceBase, "resource-base", "https://api.tradegecko.com", "base of resource_url when an event gives none: {resource-base}/{resource path}/{object_id}.json")

	fs.DurationVar(&c.RequestTimeout, "request-timeout", 10*time.Second, "time limit of one delivery attempt, connection wait included; a timeout is a failure")
	fs.IntVar(&c.Workers, "workers", 1024, "concurrent delivery attempts per dispatcher process (each holds a goroutine for one attempt)")
	fs.IntVar(&c.Window, "window", 4096, "unfinished deliveries per shard before it stops fetching (bounds memory)")
	fs.IntVar(&c.MaxConnsPerHost, "max-conns-per-host", 64, "concurrent attempts per webhook host:port; halved on each timeout or connection error and regrown on answers, with a degraded host's overflow sent to the retry queue")
	fs.IntVar(&c.MaxRetries, "max-retries", 25, "retries before a delivery is dead (Sidekiq's default 25, about 20 days; 0: a failed delivery is dead at once)")
	fs.DurationVar(&c.MaxRetryAfter, "max-retry-after", 6*time.Hour, "longest wait a receiver's Retry-After (on a 429 or 503) can ask for before the next attempt; shorter asks than the retry schedule's are ignored")
	fs.StringVar(&c.IsolationLevel, "isolation-level", "read_committed", "how events written in Kafka transactions are read: read_committed (only committed transactions are delivered) or read_uncommitted (every record, aborted transactions included)")
	fs.DurationVar(&c.RetryLease, "retry-lease", time.Minute, "how long a claimed retry stays out of its queue; a process that dies mid-attempt gives its claims back after this (must exceed --request-timeout)")
	fs.IntVar(&c.RetryWindow, "retry-window", 1024, "claimed retries in flight per shard (bounds memory while retries drain)")
	fs.DurationVar(&c.DeadRetention, "dead-retention", 180*24*time.Hour, "how long dead deliveries are kept for inspection and replay")
	fs.IntVar(&c.DeadMax, "dead-max", 10000, "dead deliveries kept per shard; the oldest beyond it are dropped")
	fs.StringVar(&c.DeliveryHeader, "delivery-header", contract.DefaultDeliveryHeader, "name of the delivery id header")
	fs.StringVar(&c.SignatureHeader, "signature-header", contract.DefaultSignatureHeader, "name of the signature header")

	addCoordinatorFlags(fs, &c.coordinatorConfig)

	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.LogFormat, "log-format", "console", "log format: console (readable) or json")
	return fs
}

// envName is the environment variable of a flag: GECKOHOOK_KAFKA_BROKERS.
func envName(flagName string) string {
	return "GECKOHOOK_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// roleFlags returns the flags of every (all of them) that cmd's role
// uses. They share every's values, so setting one sets the config field.
func roleFlags(cmd string, every *flag.FlagSet) *flag.FlagSet {
	r := roleOf(cmd)
	fs := flag.NewFlagSet("geckohook "+cmd, flag.ContinueOnError)
	// Parse only returns its errors: run prints them in one line, and the
	// help (printHelp) on -h.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	every.VisitAll(func(f *flag.Flag) {
		if flagRoles[f.Name]&r != 0 {
			fs.Var(f.Value, f.Name, f.Usage)
		}
	})
	return fs
}

// commandLineError is a mistake on the command line: run points at -h.
type commandLineError struct{ error }

// flagError words an error of flag.Parse for an operator: a flag of
// another role says whose it is.
func flagError(cmd string, err error) error {
	name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -")
	if !ok {
		return commandLineError{err}
	}
	if r := flagRoles[name]; r != 0 {
		return commandLineError{fmt.Errorf("--%s is a flag of %s, not of %s", name, r, cmd)}
	}
	return commandLineError{fmt.Errorf("unknown flag --%s", name)}
}

// parseConfig reads cmd's flags from args, then the environment, then the
// YAML file. The file and the environment may hold settings of other
// roles; cmd ignores them. A key of the file that is no flag of any role
// is an error.
func parseConfig(cmd string, args []string, getenv func(string) string) (*config, *flag.FlagSet, error) {
	c := &config{set: map[string]string{}}
	every := newFlagSet(cmd, c)
	fs := roleFlags(cmd, every)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, fs, err
		}
		return nil, fs, flagError(cmd, err)
	}
	if fs.NArg() > 0 {
		return nil, fs, commandLineError{fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))}
	}
	fs.Visit(func(f *flag.Flag) { c.set[f.Name] = "flag" })
	if c.set["config"] == "" {
		if v := getenv(envName("config")); v != "" {
			c.ConfigFile = v
			c.set["config"] = "env"
		}
	}
	file := map[string]any{}
	if c.ConfigFile != "" {
		data, err := os.ReadFile(c.ConfigFile)
		if err != nil {
			return nil, fs, fmt.Errorf("cannot read config file: %w", err)
		}
		if err := yaml.Unmarshal(data, &file); err != nil {
			return nil, fs, fmt.Errorf("cannot parse config file %s: %w", c.ConfigFile, err)
		}
		var unknown []string
		for k := range file {
			if every.Lookup(k) == nil || k == "config" {
				unknown = append(unknown, k)
			}
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return nil, fs, fmt.Errorf("config file %s: unknown settings %s (keys are flag names, e.g. kafka-brokers)", c.ConfigFile, strings.Join(unknown, ", "))
		}
	}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if c.set[f.Name] != "" || f.Name == "config" {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
			}
			c.set[f.Name] = "env"
			return
		}
		if v, ok := file[f.Name]; ok {
			s := yamlScalar(v)
			if err := fs.Set(f.Name, s); err != nil {
				errs = append(errs, fmt.Errorf("config file %s: %s: %q: %w", c.ConfigFile, f.Name, s, err))
			}
			c.set[f.Name] = "file"
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, fs, err
	}
	if c.DLQTopic == "" {
		c.DLQTopic = c.EventsTopic + ".dlq"
	}
	if c.Partitions < 1 {
		return nil, fs, fmt.Errorf("--partitions must be at least 1")
	}
	if c.Workers < 1 || c.Window < 1 || c.MaxConnsPerHost < 1 {
		return nil, fs, fmt.Errorf("--workers, --window and --max-conns-per-host must be at least 1")
	}
	if c.MaxRetries < 0 {
		return nil, fs, fmt.Errorf("--max-retries must not be negative")
	}
	if c.MaxRetryAfter <= 0 {
		return nil, fs, fmt.Errorf("--max-retry-after must be positive")
	}
	if _, err := kafkaio.ParseIsolation(c.IsolationLevel); err != nil {
		return nil, fs, fmt.Errorf("--isolation-level: %w", err)
	}
	if c.RequestTimeout <= 0 {
		return nil, fs, fmt.Errorf("--request-timeout must be positive")
	}
	if c.PortalSession <= 0 {
		return nil, fs, fmt.Errorf("--portal-session must be positive")
	}
	if c.RecoverMax < 1 {
		return nil, fs, fmt.Errorf("--recover-max must be at least 1")
	}
	if c.Partitioner != "" && c.Partitioner != "murmur2" && c.Partitioner != "crc32" {
		return nil, fs, fmt.Errorf("--events-partitioner must be murmur2, crc32 or empty, not %q", c.Partitioner)
	}
	// The api role sets --request-timeout for test sends; the lease is the
	// dispatcher's.
	if flagRoles["retry-lease"]&roleOf(cmd) != 0 && c.RetryLease <= c.RequestTimeout {
		return nil, fs, fmt.Errorf("--retry-lease (%v) must be longer than --request-timeout (%v): a lease that ends mid-attempt lets the delivery be claimed twice", c.RetryLease, c.RequestTimeout)
	}
	if c.RetryWindow < 1 || c.DeadMax < 1 || c.DeadRetention <= 0 {
		return nil, fs, fmt.Errorf("--retry-window and --dead-max must be at least 1, --dead-retention positive")
	}
	if err := c.coordinatorConfig.validate(); err != nil {
		return nil, fs, err
	}
	return c, fs, nil
}

// yamlScalar turns a YAML value into flag text; lists become comma lists.
func yamlScalar(v any) string {
	switch v := v.(type) {
	case []any:
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = fmt.Sprint(x)
		}
		return strings.Join(parts, ",")
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
