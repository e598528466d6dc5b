// Command geckoload is geckohook's capacity harness, run by `make bench`:
// for each scenario it starts `geckohook broker`, redis-server and geckohook
// as separate processes (or uses existing ones named by flags), registers
// applications and webhooks through the API, floods events into Kafka at a
// farm of loopback receivers, accounts for every (event, webhook) pair, and
// reports throughput against the raw HTTP ceiling measured on the same farm,
// latency, retry-queue depth, CPU and memory. It lives apart from the
// geckohook binary so none of this reaches production.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/geckohook/geckohook/loadtest"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("geckoload", flag.ExitOnError)
	scenarios := fs.String("scenario", os.Getenv("SCENARIO"), "comma-separated scenarios to run (empty: all): "+strings.Join(loadtest.ScenarioNames, ", ")+"; default $SCENARIO")
	short := fs.Bool("short", os.Getenv("BENCH_SHORT") == "1", "run the short smoke version of each scenario (default true when BENCH_SHORT=1)")
	out := fs.String("out", "", "directory for report.json, report.html and process logs (default bench/results/<UTC timestamp>)")
	bin := fs.String("geckohook", "bin/geckohook", "geckohook binary the suite starts as broker, dispatcher and API processes")
	redisBin := fs.String("redis-server", "redis-server", "redis-server binary the suite starts")
	brokers := fs.String("kafka-brokers", "", "existing Kafka brokers (comma-separated) instead of starting `geckohook broker`")
	redisAddr := fs.String("redis-addr", "", "existing Redis (host:port, or a comma-separated cluster) instead of starting redis-server")
	api := fs.String("api", "", "existing geckohook API (http://host:port) instead of starting geckohook; needs --admin-token, --kafka-brokers and --redis-addr")
	admin := fs.String("admin-token", "", "admin token of the existing API")
	topic := fs.String("topic", "geckohook.events", "events topic")
	workers := fs.Int("workers", 1024, "geckohook --workers, and the ceiling's concurrency")
	conns := fs.Int("max-conns-per-host", 64, "geckohook --max-conns-per-host, and the ceiling's")
	paced := fs.Float64("paced-rate", 0, "events/s of the paced phases, the healthy scenario's latency phase and the outage scenario's flood after its lead-in (0: half the rate each one's unpaced flood sustained)")
	outage := fs.Duration("outage", 0, "how long the outage scenario's failing hosts stay down, the first quarter refusing connections, the rest hanging (0: 60s, with -short 24s)")
	ceilingClient := fs.Bool("ceiling-client", false, "internal: be the raw ceiling's client process (a job on stdin, what it did on stdout); the suite starts it")
	profile := fs.Bool("profile", false, "save a CPU profile of geckohook during each flood (cpu.pprof beside the process logs)")
	soak := fs.Bool("soak", false, "run the soak instead of the suite: a paced flood under chaos (processes killed and restarted, redis-server restarted, rebalances, failing endpoints), then every pair must be delivered, dead or deleted")
	soakMinutes := fs.Float64("soak-minutes", envFloat("SOAK_MINUTES", 10), "minutes of flood and chaos in the soak (default $SOAK_MINUTES, else 10)")
	soakSettle := fs.Duration("soak-settle", 4*time.Minute, "the most the soak waits after the flood for every pair to settle")
	soakKey := fs.Uint64("soak-key", envUint("SOAK_KEY"), "key of the soak's chaos (default $SOAK_KEY, else from the clock; the key used is printed)")
	soakRate := fs.Float64("soak-rate", envFloat("SOAK_RATE", 200), "events/s of the soak's flood, two webhooks each (default $SOAK_RATE, else 200)")
	_ = fs.Parse(os.Args[1:])

	if *ceilingClient {
		if err := loadtest.CeilingClient(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "geckoload: %v\n", err)
			return 1
		}
		return 0
	}

	if *api != "" && (*admin == "" || *brokers == "" || *redisAddr == "") {
		fmt.Fprintln(os.Stderr, "geckoload: --api needs --admin-token, --kafka-brokers and --redis-addr too")
		return 2
	}
	if *out == "" {
		*out = filepath.Join("bench", "results", time.Now().UTC().Format("20060102T150405Z"))
	}
	if *soak {
		key := *soakKey
		if key == 0 {
			key = uint64(time.Now().UnixNano())
		}
		return runSoak(loadtest.SoakOptions{
			Out: *out, Log: os.Stderr, Geckohook: *bin, RedisBin: *redisBin,
			Duration: time.Duration(*soakMinutes * float64(time.Minute)), Settle: *soakSettle, Key: key, Rate: *soakRate,
		})
	}
	o := loadtest.SuiteOptions{
		Out: *out, Short: *short, Log: os.Stderr, Geckohook: *bin, RedisBin: *redisBin,
		RedisAddr: *redisAddr, API: strings.TrimRight(*api, "/"), AdminToken: *admin, Topic: *topic,
		Workers: *workers, MaxConnsPerHost: *conns, PacedRate: *paced, Profile: *profile, Outage: *outage,
	}
	// The ceiling's client runs as this binary in a process of its own,
	// so its CPU time per request is its alone.
	if self, err := os.Executable(); err == nil {
		o.CeilingClient = self
	} else {
		fmt.Fprintf(os.Stderr, "geckoload: the ceiling client's CPU is not measured: %v\n", err)
	}
	if *brokers != "" {
		o.Brokers = strings.Split(*brokers, ",")
	}
	if *scenarios != "" {
		o.Scenarios = strings.Split(*scenarios, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := loadtest.RunSuite(ctx, o)
	if rep == nil {
		fmt.Fprintf(os.Stderr, "geckoload: %v\n", err)
		return 2
	}
	rep.Command = strings.Join(os.Args, " ")
	jsonPath, htmlPath, werr := rep.WriteFiles(*out)
	fmt.Println()
	_ = rep.WriteTable(os.Stdout)
	if werr != nil {
		fmt.Fprintf(os.Stderr, "geckoload: %v\n", werr)
		return 1
	}
	fmt.Printf("\nreport: %s\n        %s\n", jsonPath, htmlPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "geckoload: %v\n", err)
		return 1
	}
	if rep.Failed() {
		return 1
	}
	return 0
}

// runSoak runs the soak, writes its report beside the bench reports, and
// prints its summary line; it fails when anything is unaccounted for.
func runSoak(o loadtest.SoakOptions) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, sum, err := loadtest.RunSoak(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "geckoload: soak (key %d): %v\n", o.Key, err)
		return 2
	}
	rep.Command = strings.Join(os.Args, " ")
	jsonPath, htmlPath, werr := rep.WriteFiles(o.Out)
	fmt.Println()
	_ = rep.WriteTable(os.Stdout)
	fmt.Printf("\n%s\n", loadtest.SoakLine(sum))
	if werr != nil {
		fmt.Fprintf(os.Stderr, "geckoload: %v\n", werr)
		return 1
	}
	fmt.Printf("report: %s\n        %s\n", jsonPath, htmlPath)
	if !sum.Passed {
		return 1
	}
	return 0
}

// envFloat is the number in environment variable name, or def.
func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil {
		return v
	}
	return def
}

// envUint is the unsigned number in environment variable name, or 0.
func envUint(name string) uint64 {
	v, _ := strconv.ParseUint(os.Getenv(name), 10, 64)
	return v
}
