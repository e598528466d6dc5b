package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/dispatch"
	"github.com/geckohook/geckohook/engine/kafkaio"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/ops"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/engine/sender"
	"github.com/geckohook/geckohook/internal/testenv"
)

// /readyz of each role against a real redis-server and the embedded Kafka:
// 200 when everything answers, 503 naming each condition that does not.
func TestReadyz(t *testing.T) {
	rs := testenv.Redis(t)
	k := testenv.Kafka(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := kafkaio.EnsureTopics(ctx, []string{k.Addr()}, kafkaio.Topic{Name: "geckohook.events", Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	loaded := registry.New(rs.Client(), registry.Options{})
	if err := loaded.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// A dispatcher in its group loop, and one that never ran.
	newDispatcher := func() *dispatch.Dispatcher {
		return dispatch.New(dispatch.Options{
			Brokers: []string{k.Addr()}, Registry: loaded, Redis: rs.Client(), SessionTimeout: 6 * time.Second,
			Sender:  sender.New(sender.Options{Policy: netguard.Policy{AllowPrivate: true, AllowHTTP: true}}),
			Workers: 2, Log: zerolog.Nop(),
		})
	}
	grouped := newDispatcher()
	dctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- grouped.Run(dctx) }()
	t.Cleanup(func() { stop(); <-ran })
	testenv.WaitFor(t, 10*time.Second, func() error {
		if !grouped.Grouped() {
			return context.DeadlineExceeded
		}
		return nil
	})

	type want struct {
		code     int
		notReady []string
	}
	cases := []struct {
		name string
		p    *process
		want want
	}{
		{"api ready", &process{role: roleAPI, brokers: []string{k.Addr()}, registry: loaded}, want{200, nil}},
		{"dispatcher ready", &process{role: roleDispatcher, brokers: []string{k.Addr()}, registry: loaded, dispatcher: grouped}, want{200, nil}},
		{"dispatcher not in its group", &process{role: roleDispatcher, brokers: []string{k.Addr()}, registry: loaded, dispatcher: newDispatcher()},
			want{503, []string{"dispatcher"}}},
		{"registry not loaded", &process{role: roleCoordinator, brokers: []string{k.Addr()}, registry: registry.New(rs.Client(), registry.Options{})},
			want{503, []string{"registry"}}},
		{"Kafka down", &process{role: roleAPI, brokers: []string{closedAddr(t)}, registry: loaded}, want{503, []string{"kafka"}}},
	}
	check := func(t *testing.T, p *process, w want) {
		t.Helper()
		if p.rdb == nil {
			p.rdb = rs.Client()
		}
		p.metrics = metrics.NewSet()
		p.registerProcessMetrics()
		s := ops.New(ops.Options{Ready: p.readiness(), Metrics: p.metrics})
		var rc fasthttp.RequestCtx
		rc.Request.SetRequestURI("/readyz")
		s.Handler()(&rc)
		var body struct {
			Status   string            `json:"status"`
			NotReady map[string]string `json:"not_ready"`
		}
		if err := json.Unmarshal(rc.Response.Body(), &body); err != nil {
			t.Fatalf("body %q: %v", rc.Response.Body(), err)
		}
		var got []string
		for name := range body.NotReady {
			got = append(got, name)
		}
		if rc.Response.StatusCode() != w.code || len(got) != len(w.notReady) {
			t.Fatalf("readyz: %d %s, want %d naming %v", rc.Response.StatusCode(), rc.Response.Body(), w.code, w.notReady)
		}
		for _, name := range w.notReady {
			if body.NotReady[name] == "" {
				t.Fatalf("readyz: %s does not name %s", rc.Response.Body(), name)
			}
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { check(t, c.p, c.want) })
	}

	// Last, as it takes Redis away from the others: the answer names Redis,
	// and geckohook_redis_up says it.
	t.Run("Redis down", func(t *testing.T) {
		p := &process{role: roleAPI, brokers: []string{k.Addr()}, registry: loaded}
		rs.Kill()
		check(t, p, want{503, []string{"redis"}})
		var b bytes.Buffer
		p.metrics.WritePrometheus(&b)
		if !strings.Contains(b.String(), "geckohook_redis_up 0\n") {
			t.Fatalf("metrics after Redis went away:\n%s", b.String())
		}
	})
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}
