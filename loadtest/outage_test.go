package loadtest

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/internal/testenv"
	"github.com/geckohook/geckohook/shard"
)

// The outage's clock takes the failing hosts down at the end of the warm
// phase (refusing, then hanging), brings them back, measures the rates on
// either side, and sees the queues empty (here they never fill).
func TestOutageClock(t *testing.T) {
	srv := testenv.Redis(t)
	store := shard.NewStore(srv.Client(), contract.DefaultRedisPrefix)
	failing := func(h *PlanHook) bool { return h.Account%10 >= 7 }
	p := singles(10, 1, 2, func(i int) (int, EndpointBehaviour) {
		if i%10 >= 7 {
			return 1, EndpointBehaviour{}
		}
		return 0, EndpointBehaviour{}
	})
	p.Apps[0].Secret = "s3cret"
	f := newTestFarm(t, 2)
	l := serveLedger(f, p, 100_000, 0)

	// Healthy deliveries, one every 5 ms, recorded as the farm would.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for e := 0; e < 100_000; e++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if failing(&p.Hooks[e%10]) {
				continue
			}
			l.Produced(e, time.Now())
			l.Record(e%10, e, []byte(strconv.Itoa(e)), true, 200, time.Now())
		}
	})
	defer wg.Wait()
	defer close(stop)

	// Phases long enough that a test goroutine held off the CPU for a few
	// hundred ms on a loaded machine still sees each one.
	o := &outage{warm: 1200 * time.Millisecond, refuse: 1500 * time.Millisecond, hang: 2 * time.Second, failing: failing}
	t0 := time.Now()
	o.start(t.Context(), f, p, store, l, t0)

	down := addrOf(t, p.Hooks[7].URL)
	eventually(t, "the failing host to refuse", func() bool {
		c, err := net.Dial("tcp", down)
		if err == nil {
			c.Close()
			return false
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	if since := time.Since(t0); since < o.warm {
		t.Fatalf("refusing %v after the start, before the warm phase's %v ended", since, o.warm)
	}
	c := &fasthttp.Client{}
	if s := sendEvent(t, c, p, 0, 0, "s3cret"); s != 200 {
		t.Fatalf("healthy host while the others refuse: %d", s)
	}
	eventually(t, "the failing host to accept and hang", func() bool {
		body := eventBody(7)
		_, err := post(c, p.Hooks[7].URL, body, "d-7", contract.NewSigner("s3cret").Sign(body), 100*time.Millisecond)
		return errors.Is(err, fasthttp.ErrTimeout)
	})
	eventually(t, "the failing host to answer again", func() bool {
		body := eventBody(17)
		s, err := post(c, p.Hooks[7].URL, body, "d-17", contract.NewSigner("s3cret").Sign(body), 100*time.Millisecond)
		return err == nil && s == 200
	})
	o.finish(5 * time.Second)
	if o.err != nil {
		t.Fatal(o.err)
	}
	if got := o.backAt.Sub(t0); got < o.warm+o.refuse+o.hang {
		t.Fatalf("back %v after the start, want at least %v", got, o.warm+o.refuse+o.hang)
	}
	if o.emptyAt.Before(o.backAt) || o.emptyAt.Sub(o.backAt) > 2*time.Second || o.drained != 0 {
		t.Fatalf("empty %v after the return, drained %d; want empty queues seen at once", o.emptyAt.Sub(o.backAt), o.drained)
	}
	if o.warmRate < 20 || o.healthyRate < 20 {
		t.Fatalf("warm rate %.0f/s, healthy rate %.0f/s; want both measured", o.warmRate, o.healthyRate)
	}
}

// addrOf is host:port of a URL http://host:port/path.
func addrOf(t *testing.T, url string) string {
	t.Helper()
	rest := url[len("http://"):]
	for i := range rest {
		if rest[i] == '/' {
			return rest[:i]
		}
	}
	return rest
}
