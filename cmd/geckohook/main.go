// Command geckohook is the webhook delivery proxy: one binary whose
// subcommands run each role (dispatcher, api), all of them in one process
// (all), or the embedded Kafka broker alone (broker).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/kafkaio"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// commands are the commands that run parts, in the order usage lists them.
var commands = []struct {
	name  string
	role  roles
	about string
}{
	{"all", roleAll, "every role in one process; with no --kafka-brokers / --redis-addr\nit starts an embedded Kafka and Redis (for trying it, not production)"},
	{"dispatcher", roleDispatcher, "consume events and deliver webhooks (needs Kafka and Redis)"},
	{"api", roleAPI, "management API and event ingest (needs Kafka and Redis)"},
	{"coordinator", roleCoordinator, "failure counters, the 3-day deletion rule and the daily mail\n(needs Kafka and Redis)"},
	{"broker", roleBroker, "the embedded Kafka broker alone (trials, tests, benchmarks)"},
}

// String lists the commands of r: "all, api".
func (r roles) String() string {
	var names []string
	for _, c := range commands {
		if r&c.role != 0 {
			names = append(names, c.name)
		}
	}
	return strings.Join(names, ", ")
}

// usage is the help of geckohook itself.
func usage() string {
	var b strings.Builder
	b.WriteString(`geckohook: sharded webhook delivery proxy (Kafka in, signed HTTP POSTs out).

Usage: geckohook <command> [flags]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-12s %s\n", c.name, strings.ReplaceAll(c.about, "\n", "\n"+strings.Repeat(" ", 15)))
	}
	b.WriteString(`  version      print the version

Run "geckohook <command> -h" for its flags: each command takes only the
flags it uses. Every flag can also be set as GECKOHOOK_<FLAG> (e.g.
GECKOHOOK_KAFKA_BROKERS) or in the --config YAML file; the command line
wins, then the environment, then the file. One file or environment can
serve every command: each ignores the settings it does not use.
`)
	return b.String()
}

// printHelp writes cmd's help: what it does and its flags.
func printHelp(w io.Writer, cmd string, fs *flag.FlagSet) {
	for _, c := range commands {
		if c.name == cmd {
			fmt.Fprintf(w, "geckohook %s: %s\n\n", cmd, strings.ReplaceAll(c.about, "\n", " "))
		}
	}
	fmt.Fprintf(w, `Usage: geckohook %s [flags]

Each flag can also be set as GECKOHOOK_<FLAG> or as a key of the --config
file; the command line wins, then the environment, then the file. Settings
of other commands found in the file or the environment are ignored; on the
command line they are errors.

Flags:
`, cmd)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return 2
	}
	cmd := args[0]
	switch cmd {
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "geckohook %s\n", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage())
		return 0
	}
	if roleOf(cmd) == 0 {
		fmt.Fprintf(stderr, "geckohook: unknown command %q; see geckohook -h\n", cmd)
		return 2
	}
	c, fs, err := parseConfig(cmd, args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(stdout, cmd, fs)
		return 0
	}
	if err != nil {
		// One line: the mistake, and where the flags are listed.
		if errors.As(err, new(commandLineError)) {
			fmt.Fprintf(stderr, "geckohook %s: %v; see geckohook %s -h\n", cmd, err, cmd)
		} else {
			fmt.Fprintf(stderr, "geckohook %s: %v\n", cmd, err)
		}
		return 2
	}
	log, err := newLogger(c, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "geckohook: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cmd, c, log, stdout); err != nil {
		if errors.As(err, new(earlyError)) {
			fmt.Fprintf(stderr, "geckohook %s: %v\n", cmd, err)
			return 1
		}
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
	// Duration fields are named *_ms (logfields_test.go keeps them so).
	zerolog.DurationFieldUnit = time.Millisecond
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// topics are the topics role creates when missing: those whose flag it
// uses (flagRoles), so a role never creates a topic under a default name
// it does not know the deployment's setting of.
func topics(c *config, role roles) []kafkaio.Topic {
	var ts []kafkaio.Topic
	for _, t := range []struct {
		flag string
		kafkaio.Topic
	}{
		{"events-topic", kafkaio.Topic{Name: c.EventsTopic, Partitions: c.Partitions, ReplicationFactor: c.Replication}},
		{"dlq-topic", kafkaio.Topic{Name: c.DLQTopic, Partitions: 1, ReplicationFactor: c.Replication}},
		{"outcomes-topic", kafkaio.Topic{Name: c.OutcomesTopic, Partitions: c.Partitions, ReplicationFactor: c.Replication}},
	} {
		if flagRoles[t.flag]&role != 0 {
			ts = append(ts, t.Topic)
		}
	}
	return ts
}

// isolation reads a level parseConfig has already checked.
func isolation(s string) kafkaio.Isolation {
	iso, _ := kafkaio.ParseIsolation(s)
	return iso
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
