package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/api"
	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/coordinator"
	"github.com/geckohook/geckohook/engine/dispatch"
	"github.com/geckohook/geckohook/engine/embedded"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/mail"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/engine/portal"
	"github.com/geckohook/geckohook/engine/publish"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/shard"
)

// roles is a set of the commands that run parts.
type roles uint8

const (
	roleAll roles = 1 << iota
	roleAPI
	roleDispatcher
	roleCoordinator
	roleBroker

	serving = roleAll | roleAPI | roleDispatcher | roleCoordinator // every role but broker
)

// roleOf returns the role of a command ("all", "api", "dispatcher",
// "coordinator", "broker"); 0 for any other.
func roleOf(cmd string) roles {
	return map[string]roles{
		"all": roleAll, "api": roleAPI, "dispatcher": roleDispatcher,
		"coordinator": roleCoordinator, "broker": roleBroker,
	}[cmd]
}

// part is one piece of a geckohook process. The parts of a role start in
// table order and stop in reverse order.
type part struct {
	name string
	// roles run the part; when, if set, says whether this process needs it
	// (a flag that turns it on, an embedded service standing in for one
	// not configured).
	roles roles
	when  func() bool
	// start prepares the part. Its ctx is the part's own: it ends when the
	// part is stopped, or when the process is told to stop while start is
	// still running.
	start func(ctx context.Context) error
	// run, if set, runs in a goroutine of its own until ctx (the part's
	// context) ends; if it returns before, the process stops with its error.
	run func(ctx context.Context) error
	// stop, if set, releases the part after its context ended and run
	// returned.
	stop func()
	// listen, if set, is the address the part serves: serve binds it
	// before any part starts (bind), so a taken port fails at once.
	listen *listener
}

// process holds what the parts of one geckohook process share; each field
// is set by the part that starts it and read by the parts after it.
type process struct {
	role   roles
	cmd    string
	c      *config
	log    zerolog.Logger
	stdout io.Writer

	brokers, redisAddrs []string
	kafka               *embedded.Kafka
	redis               *embedded.Redis
	policy              netguard.Policy
	catalog             *catalog.Catalog
	rdb                 redis.UniversalClient
	registry            *registry.Registry
	profiles            net.Listener
	coordinator         *coordinator.Coordinator
	mail                *mail.Job
	outcomes            *publish.Publisher
	dispatcher          *dispatch.Dispatcher
	opsListener         net.Listener
	ops                 *ops.Server
	metrics             *metrics.Set // every part's metrics, at /metrics
	redisUp             atomic.Bool  // the last Redis ping was answered
	events              *kafka.Writer
	apiListener         net.Listener
	api                 *api.API
}

// parts is the table of every part, in start order: which roles run each.
func (p *process) parts() []part {
	return []part{
		{name: "embedded Kafka", roles: roleAll | roleBroker, when: p.noKafka, start: p.startKafka, stop: func() { p.kafka.Close() }},
		{name: "embedded Redis", roles: roleAll, when: p.noRedis, start: p.startRedis, stop: func() { p.redis.Close() }},
		{name: "target policy", roles: serving, start: p.startPolicy},
		{name: "events catalog", roles: serving, start: p.loadCatalog},
		// Its run pings Redis for geckohook_redis_up.
		{name: "redis client", roles: serving, start: p.startRedisClient, run: p.watchRedis, stop: func() { _ = p.rdb.Close() }},
		{name: "Kafka topics", roles: serving | roleBroker, start: p.ensureTopics},
		{name: "registry", roles: serving, start: p.startRegistry, stop: func() { <-p.registry.Done() }},
		{name: "profiles", roles: everyRole, when: func() bool { return p.c.PprofListen != "" }, start: p.listenProfiles,
			run: func(ctx context.Context) error { return ops.ServeProfiles(ctx, p.profiles) }, listen: &listener{"the profiles", p.c.PprofListen, &p.profiles}},
		{name: "coordinator", roles: roleAll | roleCoordinator, start: p.newCoordinator, run: func(ctx context.Context) error { return p.coordinator.Run(ctx) }},
		{name: "daily mail", roles: roleAll | roleCoordinator, start: p.announceCoordinator, run: func(ctx context.Context) error { return p.mail.Run(ctx) }},
		// Stopped after the dispatcher drained, so its last outcomes go out.
		{name: "outcomes publisher", roles: roleAll | roleDispatcher, start: p.startOutcomes, stop: p.closeOutcomes},
		{name: "dispatcher (drained)", roles: roleAll | roleDispatcher, start: p.newDispatcher, run: func(ctx context.Context) error { return p.dispatcher.Run(ctx) }},
		{name: "metrics and health endpoint", roles: roleDispatcher | roleCoordinator, when: func() bool { return p.c.MetricsListen != "" },
			start: p.listenOps, run: func(ctx context.Context) error { return p.ops.Serve(ctx, p.opsListener) },
			listen: &listener{"the metrics and health endpoint", p.c.MetricsListen, &p.opsListener}},
		{name: "event writer", roles: roleAll | roleAPI, start: p.newEventWriter, stop: func() { _ = p.events.Close() }},
		{name: "management API", roles: roleAll | roleAPI, start: p.listenAPI, run: func(ctx context.Context) error { return p.api.Serve(ctx, p.apiListener) },
			listen: &listener{"the API", p.c.APIListen, &p.apiListener}},
	}
}

// runs reports whether this process runs pt.
func (p *process) runs(pt part) bool {
	return pt.roles&p.role != 0 && (pt.when == nil || pt.when())
}

// serve runs the parts of cmd's role until ctx ends (a signal) or one of
// them stops by itself, then stops the started ones in reverse order,
// logging how long each took.
func serve(ctx context.Context, cmd string, c *config, log zerolog.Logger, stdout io.Writer) error {
	p := &process{role: roleOf(cmd), cmd: cmd, c: c, log: log, stdout: stdout,
		brokers: splitList(c.KafkaBrokers), redisAddrs: splitList(c.RedisAddr), metrics: metrics.NewSet()}
	metrics.ExposeMetadata(true) // # TYPE lines, so histograms and counters say what they are
	if err := p.check(); err != nil {
		return earlyError{err}
	}
	table := p.parts()
	unbind, err := p.bind(table)
	if err != nil {
		return err
	}
	defer unbind()
	var up []*started
	defer func() {
		for i := len(up) - 1; i >= 0; i-- {
			t := time.Now()
			up[i].halt(log)
			log.Info().Str("part", up[i].name).Dur("took_ms", time.Since(t)).Msg("stopped")
		}
	}()
	failed := make(chan error, len(table)) // a part that stops on its own stops the process
	for _, pt := range table {
		if !p.runs(pt) {
			continue
		}
		s, err := begin(ctx, pt, failed)
		if err != nil {
			return err
		}
		if s != nil {
			up = append(up, s)
		}
		if ctx.Err() != nil {
			break // told to stop while starting: stop what started
		}
	}
	log.Info().Str("role", cmd).Str("version", version).Msg("geckohook running; Ctrl-C or SIGTERM to stop")
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

// started is a part that started and has something to stop.
type started struct {
	part
	cancel context.CancelFunc
	ran    chan error // run's result; nil without run
}

// begin starts pt on a context of its own, which sig (the process's stop
// signal) also ends while start runs. It returns nil for a part with
// nothing to stop; a run that returns before its stop reports to failed.
func begin(sig context.Context, pt part, failed chan<- error) (*started, error) {
	ctx, cancel := context.WithCancel(context.Background())
	if pt.start != nil {
		unlink := context.AfterFunc(sig, cancel)
		err := pt.start(ctx)
		unlink()
		if err != nil {
			cancel()
			return nil, err
		}
	}
	if pt.run == nil && pt.stop == nil {
		cancel()
		return nil, nil
	}
	s := &started{part: pt, cancel: cancel}
	if pt.run != nil {
		s.ran = make(chan error, 1)
		go func() {
			err := pt.run(ctx)
			if ctx.Err() == nil {
				failed <- fmt.Errorf("%s stopped by itself: %v", pt.name, err)
				err = nil
			}
			s.ran <- err
		}()
	}
	return s, nil
}

// halt ends the part's context, waits for its run, and stops it.
func (s *started) halt(log zerolog.Logger) {
	s.cancel()
	if s.ran != nil {
		if err := <-s.ran; err != nil {
			log.Error().Err(err).Str("part", s.name).Msg("error while stopping")
		}
	}
	if s.stop != nil {
		s.stop()
	}
}

// check refuses a role without the services it needs: only `all` starts
// embedded ones.
func (p *process) check() error {
	if p.role == roleAll || p.role == roleBroker {
		return nil
	}
	if len(p.brokers) == 0 {
		return fmt.Errorf("--kafka-brokers is required for %s (only `all` starts an embedded Kafka)", p.cmd)
	}
	if len(p.redisAddrs) == 0 {
		return fmt.Errorf("--redis-addr is required for %s (only `all` starts an embedded Redis)", p.cmd)
	}
	return nil
}

func (p *process) noKafka() bool { return p.role == roleBroker || len(p.brokers) == 0 }
func (p *process) noRedis() bool { return len(p.redisAddrs) == 0 }

func (p *process) startKafka(context.Context) error {
	k, err := embedded.StartKafka(embedded.KafkaOptions{Listen: p.c.EmbeddedKafka, Partitions: p.c.Partitions, DataDir: p.c.DataDir})
	if err != nil {
		return err
	}
	p.kafka, p.brokers = k, []string{k.Addr()}
	if p.role == roleBroker {
		fmt.Fprintf(p.stdout, "embedded Kafka broker listening on %s (for trials and tests, not production data)\n", k.Addr())
		p.log.Info().Str("addr", k.Addr()).Str("data_dir", p.c.DataDir).Msg("embedded Kafka broker running")
		return nil
	}
	fmt.Fprintf(p.stdout, "embedded Kafka listening on %s (for trying geckohook, not for production data)\n", k.Addr())
	return nil
}

func (p *process) startRedis(context.Context) error {
	r, err := embedded.StartRedis(p.c.EmbeddedRedis)
	if err != nil {
		return err
	}
	p.redis, p.redisAddrs = r, []string{r.Addr()}
	fmt.Fprintf(p.stdout, "embedded Redis listening on %s (in memory: for trying geckohook, not for production data)\n", r.Addr())
	return nil
}

// startPolicy decides which webhook addresses may be used: with an
// embedded Kafka or Redis (a trial), private addresses and plain http too
// unless the flags say otherwise, and an admin token is generated if none
// is set.
func (p *process) startPolicy(context.Context) error {
	c := p.c
	if p.kafka != nil || p.redis != nil {
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
			fmt.Fprintf(p.stdout, "admin token (generated for this run; set --admin-token to choose one): %s\n", c.AdminToken)
		}
	}
	if c.AllowPrivate || c.AllowHTTP {
		p.log.Warn().Bool("allow_private_targets", c.AllowPrivate).Bool("allow_http", c.AllowHTTP).
			Msg("webhooks may target private addresses and/or plain http: fine for a trial, never in production")
	}
	p.policy = netguard.Policy{AllowPrivate: c.AllowPrivate, AllowHTTP: c.AllowHTTP}
	return nil
}

func (p *process) loadCatalog(context.Context) (err error) {
	p.catalog, err = catalog.Load(p.c.EventsCatalog)
	return err
}

func (p *process) startRedisClient(ctx context.Context) error {
	p.rdb = redis.NewUniversalClient(&redis.UniversalOptions{Addrs: p.redisAddrs, Password: p.c.RedisPassword})
	if err := waitRedis(ctx, p.rdb, p.log); err != nil {
		_ = p.rdb.Close()
		return err
	}
	p.redisUp.Store(true)
	return nil
}

func (p *process) ensureTopics(ctx context.Context) error {
	return kafkaio.EnsureTopics(ctx, p.brokers, topics(p.c, p.role)...)
}

func (p *process) startRegistry(ctx context.Context) error {
	delay := p.metrics.NewPrometheusHistogramExt("geckohook_registry_change_delay_seconds", changeDelayBuckets)
	p.registry = registry.New(p.rdb, registry.Options{Prefix: p.c.RedisPrefix, Log: p.log.With().Str("part", "registry").Logger(),
		ChangeDelay: func(d time.Duration) { delay.Update(d.Seconds()) }})
	if err := p.registry.Start(ctx); err != nil {
		return err
	}
	p.registerProcessMetrics()
	apps, hooks := p.registry.Counts()
	p.log.Info().Int("applications", apps).Int("webhooks", hooks).
		Int64("took_ms", p.registry.LastLoad().Milliseconds()).Msg("registry loaded")
	return nil
}

func (p *process) listenProfiles(context.Context) (err error) {
	fmt.Fprintf(p.stdout, "profiles listening on http://%s/debug/pprof/\n", p.profiles.Addr())
	return nil
}

func (p *process) startOutcomes(context.Context) error {
	p.outcomes = newOutcomes(p.c, p.brokers, p.rdb, p.metrics, p.log)
	p.outcomes.Start()
	return nil
}

func (p *process) closeOutcomes() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.outcomes.Close(ctx); err != nil {
		p.log.Warn().Err(err).Msg("outcomes not all flushed")
	}
}

func (p *process) newDispatcher(context.Context) error {
	c := p.c
	p.dispatcher = dispatch.New(dispatch.Options{
		Brokers: p.brokers, Topic: c.EventsTopic, DLQTopic: c.DLQTopic, Group: c.Group,
		Registry: p.registry, Catalog: p.catalog, Redis: p.rdb, RedisPrefix: c.RedisPrefix, ResourceBase: c.ResourceBase,
		Sender:  p.newSender(),
		Workers: c.Workers, Window: c.Window, MaxRetries: c.MaxRetries, MaxRetryAfter: c.MaxRetryAfter, Isolation: isolation(c.IsolationLevel),
		Lease: c.RetryLease, RetryWindow: c.RetryWindow, Outcomes: p.outcomes,
		DeadRetention: c.DeadRetention, DeadMax: c.DeadMax,
		DrainTimeout: c.RequestTimeout + 5*time.Second, SessionTimeout: c.KafkaSession,
		Metrics: p.metrics, Log: p.log.With().Str("part", "dispatcher").Logger(),
	})
	p.log.Info().Strs("brokers", p.brokers).Str("topic", c.EventsTopic).Str("group", c.Group).Msg("dispatcher running")
	return nil
}

// newSender builds a sender with the delivery flags: the dispatcher's for
// deliveries, the API's for test sends.
func (p *process) newSender() *sender.Sender {
	c := p.c
	return sender.New(sender.Options{
		Policy: p.policy, Timeout: c.RequestTimeout, MaxConnsPerHost: c.MaxConnsPerHost,
		UserAgent: "geckohook/" + version, DeliveryHeader: c.DeliveryHeader, SignatureHeader: c.SignatureHeader,
	})
}

func (p *process) listenOps(context.Context) (err error) {
	p.ops = ops.New(ops.Options{Health: p.health, Ready: p.readiness(), Metrics: p.metrics, Log: p.log.With().Str("part", "metrics").Logger()})
	fmt.Fprintf(p.stdout, "metrics and health endpoint listening on http://%s\n", p.opsListener.Addr())
	return nil
}

func (p *process) newEventWriter(context.Context) error {
	p.events = kafkaio.NewWriter(p.brokers, p.c.EventsTopic)
	return nil
}

func (p *process) listenAPI(context.Context) (err error) {
	c := p.c
	overlap := c.SecretOverlap
	if overlap == 0 {
		overlap = -1 // the API reads 0 as its default, a negative overlap as none
	}
	por, err := p.newPortal()
	if err != nil {
		return err
	}
	p.api = api.New(api.Options{
		Registry: p.registry, Catalog: p.catalog, Policy: p.policy, Lookup: netguard.SystemLookup, AdminToken: c.AdminToken,
		Produce: func(ctx context.Context, key, value []byte) error {
			return p.events.WriteMessages(ctx, kafka.Message{Key: key, Value: value})
		},
		Health: p.health, Ready: p.readiness(), Metrics: p.metrics, Deliveries: shard.NewStore(p.rdb, c.RedisPrefix),
		Log:           p.log.With().Str("part", "api").Logger(),
		SecretOverlap: overlap,
		// Test sends: the dispatcher's policy, time limit and headers.
		Sender:       p.newSender(),
		ResourceBase: c.ResourceBase,
		Recovery: api.RecoveryOptions{
			Brokers: p.brokers, Topic: c.EventsTopic, Partitioner: c.Partitioner, Max: c.RecoverMax,
			Isolation: isolation(c.IsolationLevel), Redis: p.rdb, Prefix: c.RedisPrefix,
		},
		PortalLink: por.Mint, Portal: por.Handler,
	})
	fmt.Fprintf(p.stdout, "management API listening on http://%s\n", p.apiListener.Addr())
	return nil
}

// newPortal builds the developer portal the API serves under /portal/.
func (p *process) newPortal() (*portal.Portal, error) {
	c := p.c
	tmpl, err := mail.LoadTemplates(c.MailTemplates)
	if err != nil {
		return nil, err
	}
	base := c.PortalURL
	if base == "" {
		// A wildcard listen address is no address to open: loopback then
		// (set --portal-url for links that leave the host).
		addr := p.apiListener.Addr().(*net.TCPAddr)
		host := addr.IP.String()
		if addr.IP.IsUnspecified() {
			host = "127.0.0.1"
		}
		base = "http://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))
	}
	return portal.New(portal.Options{
		Redis: p.rdb, Prefix: c.RedisPrefix, Registry: p.registry, Catalog: p.catalog, Policy: c.policy(),
		MailTemplates: tmpl, URL: base, SessionTTL: c.PortalSession,
		Log: p.log.With().Str("part", "portal").Logger(),
	})
}
