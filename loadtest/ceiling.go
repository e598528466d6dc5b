package loadtest

// This file owns the raw HTTP ceiling: the same farm endpoints sent the same
// bodies and headers straight from a fasthttp client, without Kafka or Redis,
// at geckohook's concurrency. It is the most deliveries/s this machine can
// do, and every scenario's rate is reported against it. Its loop is also
// bench's BenchmarkRawCeiling. In `make bench` the client runs as a process
// of its own (geckoload -ceiling-client), so its CPU time per request is
// read from /proc apart from the farm's, as geckohook's is.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
)

// resourceBase is geckohook's default --resource-base, which the bodies it
// sends in the scenarios are built with.
const resourceBase = "https://api.tradegecko.com"

// Ceiling is the outcome of one ceiling run.
type Ceiling struct {
	Requests int64
	Elapsed  time.Duration
	PerSec   float64
	Workers  int // the concurrency that gave it
	// CPUPerRequest is the client's own CPU time per request, read from
	// /proc/<pid>/stat of the client process around its sending loop; 0
	// when the client ran inside this process (CeilingOptions.Client
	// empty), where the farm's CPU cannot be told apart from it.
	CPUPerRequest time.Duration
}

// CeilingOptions shapes a ceiling run.
type CeilingOptions struct {
	Duration        time.Duration // how long to send
	Workers         int           // concurrent requests (geckohook's --workers)
	MaxConnsPerHost int           // geckohook's --max-conns-per-host
	// Events, when above 0, is how many events one run sends (a benchmark's
	// b.N); Duration then bounds the run only when it is above 0 too.
	Events int
	// Healthy picks the hooks to send to (nil: every hook whose endpoint
	// answers at once, the zero behaviour).
	Healthy func(h *PlanHook) bool
	// Client, when set, is the geckoload binary: the requests are sent by
	// `Client -ceiling-client`, a process of its own, so that its CPU time
	// is the client's alone (the farm stays in this process). Empty: the
	// client runs in this process and its CPU is not measured.
	Client string
}

// RunCeiling measures the ceiling at 64 and 256 concurrent requests and at
// o.Workers, a third of o.Duration each, and keeps the best: on a small
// machine fewer goroutines often go faster, and the ceiling is the most
// this machine can do, not what one setting gives.
func RunCeiling(ctx context.Context, farm *Farm, p *Plan, o CeilingOptions) (Ceiling, error) {
	var best Ceiling
	for _, w := range []int{64, 256, o.Workers} {
		if w > o.Workers {
			continue
		}
		one := o
		one.Workers, one.Duration = w, o.Duration/3
		c, err := RunCeilingAt(ctx, farm, p, one)
		if err != nil {
			return Ceiling{}, err
		}
		if c.PerSec > best.PerSec {
			best = c
		}
	}
	return best, nil
}

// RunCeilingAt is one ceiling run at exactly o.Workers concurrent
// requests: it sends the plan's events to its healthy endpoints, recording
// them in a ledger of its own on the farm, and measures the rate.
func RunCeilingAt(ctx context.Context, farm *Farm, p *Plan, o CeilingOptions) (Ceiling, error) {
	healthy := o.Healthy
	if healthy == nil {
		healthy = func(h *PlanHook) bool { return h.Behaviour == (EndpointBehaviour{}) }
	}
	// The ledger covers more events than this machine can send in the time
	// given; a run that reaches the end stops early and is still measured.
	maxEvents := max(int(o.Duration.Seconds()*150_000), 10_000)
	if o.Events > 0 {
		maxEvents = o.Events
	}
	job := newCeilingJob(p, healthy, o, maxEvents)
	l := NewLedger(p, maxEvents)
	farm.Use(l)
	defer farm.Use(nil)
	var res CeilingResult
	var err error
	if o.Client == "" {
		res = job.run(ctx, func(e int) { l.Produced(e, time.Now()) })
	} else {
		// The client cannot tell this process what it produced: every
		// event it may send is expected from the start.
		now := time.Now()
		for e := range maxEvents {
			l.Produced(e, now)
		}
		if res, err = runCeilingClient(ctx, o.Client, job); err != nil {
			return Ceiling{}, err
		}
	}
	sent, failed := res.Sent, res.Failed
	if failed > 0 && failed*100 > sent+failed {
		return Ceiling{}, fmt.Errorf("ceiling: %d of %d requests failed, the first: %s", failed, sent+failed, res.FirstErr)
	}
	// Every answered request was recorded; a failed one may have been too.
	if got := l.Delivered(); got < sent || got > sent+failed {
		return Ceiling{}, fmt.Errorf("ceiling: the farm recorded %d deliveries of %d sent (%d failed)", got, sent, failed)
	}
	c := Ceiling{Requests: sent, Elapsed: res.Elapsed, PerSec: float64(sent) / res.Elapsed.Seconds(), Workers: o.Workers}
	if o.Client != "" && sent > 0 {
		c.CPUPerRequest = res.CPU / time.Duration(sent)
	}
	return c, nil
}

// ceilingJob is one ceiling run's work, the same whether this process or a
// client process sends it: per account, the endpoints its events go to.
type ceilingJob struct {
	Event           string            `json:"event"`
	Secrets         []string          `json:"secrets"`  // per application
	Accounts        [][]ceilingTarget `json:"accounts"` // event e goes to Accounts[e % len]
	Workers         int               `json:"workers"`
	MaxConnsPerHost int               `json:"max_conns_per_host"`
	Duration        time.Duration     `json:"duration"` // 0: until MaxEvents are sent
	MaxEvents       int               `json:"max_events"`
	Stamp           int64             `json:"stamp"` // the bodies' timestamp
}

type ceilingTarget struct {
	URL string `json:"url"`
	ID  string `json:"id"` // webhook id, for the delivery ids
	App int32  `json:"app"`
}

// CeilingResult is what one ceiling loop did; CPU is the client
// process's CPU time during it (0 when it ran in the harness).
type CeilingResult struct {
	Sent     int64         `json:"sent"`
	Failed   int64         `json:"failed"`
	FirstErr string        `json:"first_err,omitempty"`
	Elapsed  time.Duration `json:"elapsed"`
	CPU      time.Duration `json:"cpu"`
}

func newCeilingJob(p *Plan, send func(h *PlanHook) bool, o CeilingOptions, maxEvents int) *ceilingJob {
	j := &ceilingJob{Event: p.Event, Workers: max(o.Workers, 1), MaxConnsPerHost: o.MaxConnsPerHost,
		MaxEvents: maxEvents, Stamp: time.Now().Unix(), Accounts: make([][]ceilingTarget, len(p.Accounts))}
	if o.Events == 0 || o.Duration > 0 {
		j.Duration = o.Duration
	}
	for _, a := range p.Apps {
		j.Secrets = append(j.Secrets, a.Secret)
	}
	for a, hooks := range p.Accounts {
		for _, hi := range hooks {
			if h := &p.Hooks[hi]; send(h) {
				j.Accounts[a] = append(j.Accounts[a], ceilingTarget{URL: h.URL, ID: h.ID, App: h.App})
			}
		}
	}
	return j
}

// run sends the job's events from Workers goroutines until MaxEvents are
// sent or Duration ends; produced, when set, is told each event first.
func (j *ceilingJob) run(ctx context.Context, produced func(e int)) CeilingResult {
	cat := catalog.Default()
	signers := make([]*contract.Signer, len(j.Secrets))
	for i, s := range j.Secrets {
		signers[i] = contract.NewSigner(s)
	}
	c := &fasthttp.Client{
		MaxConnsPerHost: j.MaxConnsPerHost, MaxConnWaitTimeout: 10 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, MaxResponseBodySize: 4096,
		MaxIdleConnDuration: 30 * time.Second,
	}
	defer c.CloseIdleConnections()
	if j.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, j.Duration)
		defer cancel()
	}
	var nextEvent, sent, failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < max(j.Workers, 1); w++ {
		wg.Go(func() {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			var body, sig, id []byte
			for ctx.Err() == nil {
				e := int(nextEvent.Add(1) - 1)
				if e >= j.MaxEvents || len(j.Accounts) == 0 {
					return
				}
				body = ceilingBody(body[:0], cat, j.Event, e, j.Stamp)
				if produced != nil {
					produced(e)
				}
				for _, t := range j.Accounts[e%len(j.Accounts)] {
					sig = signers[t.App].AppendSignature(sig[:0], body)
					id = contract.AppendDeliveryID(id[:0], "ceiling", 0, int64(e), t.ID)
					req.Reset()
					req.Header.SetMethod(fasthttp.MethodPost)
					req.SetRequestURI(t.URL)
					req.Header.SetContentType("application/json")
					req.Header.SetBytesV(contract.DefaultDeliveryHeader, id)
					req.Header.SetBytesV(contract.DefaultSignatureHeader, sig)
					req.SetBodyRaw(body)
					if err := c.DoTimeout(req, resp, 10*time.Second); err != nil {
						// A loaded machine may drop the odd request; many
						// failing mean the farm is broken.
						errOnce.Do(func() { firstErr = fmt.Errorf("ceiling request to %s: %w", t.URL, err) })
						failed.Add(1)
						continue
					}
					sent.Add(1)
				}
			}
		})
	}
	wg.Wait()
	r := CeilingResult{Sent: sent.Load(), Failed: failed.Load(), Elapsed: time.Since(start)}
	if firstErr != nil {
		r.FirstErr = firstErr.Error()
	}
	return r
}

// runCeilingClient runs job in `bin -ceiling-client` and returns what it did.
func runCeilingClient(ctx context.Context, bin string, job *ceilingJob) (CeilingResult, error) {
	in, err := json.Marshal(job)
	if err != nil {
		return CeilingResult{}, fmt.Errorf("cannot encode the ceiling job: %w", err)
	}
	cmd := exec.CommandContext(ctx, bin, "-ceiling-client")
	var out, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(in), &out, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		return CeilingResult{}, fmt.Errorf("ceiling client %s: %w: %s", bin, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var r CeilingResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return CeilingResult{}, fmt.Errorf("ceiling client %s answered %q: %w", bin, out.Bytes(), err)
	}
	return r, nil
}

// CeilingClient is the ceiling's client process (`geckoload
// -ceiling-client`): it reads a job from in, sends it, and writes what it
// did to out, with its own CPU time during the sending read from
// /proc/self/stat, so nothing else is counted (not the farm, which runs
// in the harness, nor this process's start and the job's decoding).
func CeilingClient(ctx context.Context, in io.Reader, out io.Writer) error {
	var job ceilingJob
	if err := json.NewDecoder(in).Decode(&job); err != nil {
		return fmt.Errorf("cannot read the ceiling job: %w", err)
	}
	before, err := ReadUsage(os.Getpid())
	if err != nil {
		return err
	}
	r := job.run(ctx, nil)
	after, err := ReadUsage(os.Getpid())
	if err != nil {
		return err
	}
	r.CPU = after.CPU - before.CPU
	return json.NewEncoder(out).Encode(r)
}

// ceilingBody appends the body geckohook sends for event e of a plan
// (object_id e, the plan's event, the given timestamp, no resource_url of
// its own), built by the contract as geckohook builds it.
func ceilingBody(dst []byte, cat *catalog.Catalog, event string, e int, stamp int64) []byte {
	ev := contract.Event{Event: event, ObjectID: int64(e), Timestamp: stamp}
	return contract.AppendBody(dst, &ev, resourceBase, cat)
}
