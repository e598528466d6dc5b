package ops

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/valyala/fasthttp"
)

// Check is one condition of readiness.
type Check struct {
	// Name names the condition in /readyz's answer ("redis", "kafka").
	Name string
	// Ready returns nil when the condition holds.
	Ready func(ctx context.Context) error
}

// readyTimeout bounds one /readyz answer; a check still running then is
// not ready.
const readyTimeout = 3 * time.Second

// Readyz answers a readiness check: every check runs at once, and the
// answer is 200 {"status":"ok"} when all pass within 3 s, else 503
// {"status":"unavailable","not_ready":{name: reason, …}}.
func Readyz(ctx *fasthttp.RequestCtx, checks []Check) {
	failed := runChecks(checks)
	if len(failed) == 0 {
		WriteJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "ok"})
		return
	}
	WriteJSON(ctx, fasthttp.StatusServiceUnavailable, struct {
		Status   string            `json:"status"`
		NotReady map[string]string `json:"not_ready"`
	}{"unavailable", failed})
}

// runChecks runs checks concurrently and returns the reasons of those that
// failed, by name.
func runChecks(checks []Check) map[string]string {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan error, 1)
			go func() { done <- c.Ready(ctx) }()
			select {
			case errs[i] = <-done:
			case <-ctx.Done():
				errs[i] = errors.New("no answer within 3s")
			}
		}()
	}
	wg.Wait()
	failed := make(map[string]string)
	for i, err := range errs {
		if err != nil {
			failed[checks[i].Name] = err.Error()
		}
	}
	return failed
}

// RedisReady is the check "Redis answers a PING". seen, if set, is told
// each answer (or its absence), e.g. for a geckohook_redis_up gauge.
func RedisReady(rdb redis.UniversalClient, seen func(up bool)) Check {
	return Check{Name: "redis", Ready: func(ctx context.Context) error {
		err := rdb.Ping(ctx).Err()
		if seen != nil {
			seen(err == nil)
		}
		return err
	}}
}

// KafkaReady is the check "the brokers answer a metadata request" (within
// 2 s), asked through client.
func KafkaReady(client *kafka.Client) Check {
	return Check{Name: "kafka", Ready: func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		// No topics: the answer lists the brokers only.
		_, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{}})
		return err
	}}
}
