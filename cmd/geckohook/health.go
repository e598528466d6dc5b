package main

import (
	"context"
	"errors"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/geckohook/geckohook/engine/ops"
)

// redisPingEvery is how often the process pings Redis for geckohook_redis_up
// when nothing else did.
const redisPingEvery = 5 * time.Second

// pingRedis pings Redis (within 3 s) and records the answer for
// geckohook_redis_up.
func (p *process) pingRedis(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err := p.rdb.Ping(ctx).Err()
	p.redisUp.Store(err == nil)
	return err
}

// watchRedis pings Redis every redisPingEvery until ctx ends, so
// geckohook_redis_up follows Redis even when no probe asks.
func (p *process) watchRedis(ctx context.Context) error {
	t := time.NewTicker(redisPingEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := p.pingRedis(ctx); err != nil && ctx.Err() == nil {
				p.log.Warn().Err(err).Msg("Redis does not answer")
			}
		}
	}
}

// health is /healthz of every role: the process lives and Redis answers.
func (p *process) health(ctx context.Context) error { return p.pingRedis(ctx) }

// readiness is /readyz of the role: Redis answers a PING, the Kafka
// brokers a metadata request, the registry is loaded and following
// changes, and a dispatcher's consumer group loop runs (it holds
// partitions or waits for an assignment).
func (p *process) readiness() []ops.Check {
	checks := []ops.Check{
		ops.RedisReady(p.rdb, p.redisUp.Store),
		ops.KafkaReady(&kafka.Client{Addr: kafka.TCP(p.brokers...), Timeout: 2 * time.Second}),
		{Name: "registry", Ready: func(context.Context) error {
			if p.registry.Reloads() == 0 {
				return errors.New("not loaded yet")
			}
			select {
			case <-p.registry.Done():
				return errors.New("stopped following changes")
			default:
				return nil
			}
		}},
	}
	if p.role&(roleAll|roleDispatcher) != 0 {
		checks = append(checks, ops.Check{Name: "dispatcher", Ready: func(context.Context) error {
			if p.dispatcher == nil || !p.dispatcher.Grouped() {
				return errors.New("not in its consumer group")
			}
			return nil
		}})
	}
	return checks
}

// changeDelayBuckets are the upper bounds (seconds) of
// geckohook_registry_change_delay_seconds: a change normally reaches every
// process within milliseconds, so the buckets are finer than those of a
// delivery.
var changeDelayBuckets = []float64{.001, .002, .005, .01, .02, .05, .1, .2, .3, .4, .5, .6, .8, 1, 1.5, 2, 5, 10, 30}

// registerProcessMetrics puts the process-wide gauges in the set: the
// registry's size, how long its last full load took, and whether Redis
// answered the last ping.
func (p *process) registerProcessMetrics() {
	p.metrics.NewGauge("geckohook_registry_applications", func() float64 {
		apps, _ := p.registry.Counts()
		return float64(apps)
	})
	p.metrics.NewGauge("geckohook_registry_webhooks", func() float64 {
		_, hooks := p.registry.Counts()
		return float64(hooks)
	})
	p.metrics.NewGauge("geckohook_registry_load_seconds", func() float64 {
		return p.registry.LastLoad().Seconds()
	})
	p.metrics.NewGauge("geckohook_redis_up", func() float64 {
		if p.redisUp.Load() {
			return 1
		}
		return 0
	})
}
