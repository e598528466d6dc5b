package api

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/netguard"
	"github.com/geckohook/geckohook/engine/registry"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/shard"
)

const inProcessAdmin = "in-process-admin-token"

var inProcessNow = time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)

// inProcess is the API over a real redis-server and registry, called
// without a network (one fasthttp.RequestCtx per request), for tables and
// fuzzing that send thousands of requests.
type inProcess struct {
	h        fasthttp.RequestHandler
	appToken string

	mu   sync.Mutex
	last record // the last record written to Kafka
	n    int    // records written
}

// newInProcess starts the API with a strict address policy whose DNS says
// *.example.com is public and everything else does not resolve.
func newInProcess(tb testing.TB) *inProcess {
	tb.Helper()
	rdb := testenv.Redis(tb).Client()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	reg := registry.New(rdb, registry.Options{Now: func() time.Time { return inProcessNow }})
	if err := reg.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	_, token, err := reg.CreateApp(ctx, "shop", "dev@example.com")
	if err != nil {
		tb.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for reg.AppByToken(token) == nil {
		if time.Now().After(deadline) {
			tb.Fatal("the registry did not load the new application")
		}
		time.Sleep(5 * time.Millisecond)
	}
	p := &inProcess{appToken: token}
	p.h = New(Options{
		Registry:   reg,
		Catalog:    catalog.Default(),
		Policy:     netguard.Policy{},
		Lookup:     fakeLookup,
		AdminToken: inProcessAdmin,
		Produce:    p.produce,
		Log:        zerolog.Nop(),
		Now:        func() time.Time { return inProcessNow },
		Deliveries: shard.NewStore(rdb, "gh:"),
	}).Handler()
	return p
}

func fakeLookup(_ context.Context, host string) ([]netip.Addr, error) {
	if strings.HasSuffix(host, ".example.com") {
		return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
	}
	return nil, errors.New("no such host")
}

// record is one Kafka record the API produced.
type record struct{ key, value []byte }

func (p *inProcess) produce(_ context.Context, key, value []byte) error {
	p.mu.Lock()
	p.last = record{append([]byte(nil), key...), append([]byte(nil), value...)}
	p.n++
	p.mu.Unlock()
	return nil
}

func (p *inProcess) produced() (record, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last, p.n
}

type answer struct {
	status      int
	contentType string
	body        []byte
}

func (p *inProcess) do(method, path, token string, body []byte) answer {
	var ctx fasthttp.RequestCtx
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	req.Header.SetMethod(method)
	req.SetRequestURI(path)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.SetContentType("application/json")
	req.SetBody(body)
	ctx.Init(req, nil, nil)
	p.h(&ctx)
	return answer{
		status:      ctx.Response.StatusCode(),
		contentType: string(ctx.Response.Header.ContentType()),
		body:        append([]byte(nil), ctx.Response.Body()...),
	}
}
