package loadtest

import (
	"strconv"
	"time"
)

// Plan is who subscribes to what in a load test: applications, accounts and
// their webhooks, each webhook one endpoint of the farm. Every generated
// event carries Plan.Event; event e belongs to account EventAccount(e) and
// is expected at every webhook of that account, so the (event, webhook)
// pairs are known before a single event is produced.
type Plan struct {
	Event    string     // event name of every generated event, e.g. "order.create"
	Apps     []PlanApp  // Secret and Token are filled in by registration
	Hooks    []PlanHook // URL by the farm, ID by registration
	Accounts [][]int32  // account index -> its webhooks (indexes into Hooks), in order
}

// PlanApp is one application of a plan.
type PlanApp struct {
	Name   string
	ID     string // from the API
	Secret string // signing secret, from the API
	Token  string // bearer token, from the API
}

// PlanHook is one webhook of a plan.
type PlanHook struct {
	App       int32             // index into Plan.Apps
	Account   int32             // index into Plan.Accounts
	Pos       int32             // position in Plan.Accounts[Account]
	Server    int               // farm server (one host:port each) it lives on
	Behaviour EndpointBehaviour // how its endpoint answers
	URL       string            // set by Farm.Add
	ID        string            // webhook id, from the API
}

// EndpointBehaviour is how one farm endpoint answers. The zero value answers 200 at once.
// The rules are checked in this order: Reset, RefuseUntil, Hang and
// HangUntil, GoneFrom, FailUntil, FailRate, then Status after Delay plus up
// to Jitter.
type EndpointBehaviour struct {
	Status    int           // status of a normal answer (0: 200)
	Delay     time.Duration // every answer waits this long...
	Jitter    time.Duration // ...plus a uniform random [0, Jitter)
	FailRate  float64       // fraction of requests answered 500 (0..1)
	FailUntil time.Time     // answer 500 until this instant, then normally
	GoneFrom  time.Time     // answer 410 from this instant on (zero: never)
	Hang      bool          // never answer: hold the request until the client gives up
	Reset     bool          // close the connection with a TCP reset, no answer
	// RefuseUntil: the endpoint's farm server refuses connections until
	// this instant. Refusal is a server's, not a path's: the server stops
	// listening (a connect is refused) and drops its open connections as
	// soon as one of its hooks is given a RefuseUntil in the future, and
	// listens on the same port again at the latest RefuseUntil of its
	// hooks; every hook on it is refused meanwhile, so give such hooks
	// servers of their own. A request on a connection taken just before
	// is reset.
	RefuseUntil time.Time
	// HangUntil: requests arriving before this instant hang as with Hang
	// (held without an answer until the client gives up); later ones are
	// answered normally.
	HangUntil time.Time
}

// AccountName is the account id of account index i.
func AccountName(i int) string { return "acc-" + strconv.Itoa(i) }

// EventAccount is the account index event e belongs to.
func (p *Plan) EventAccount(e int) int { return e % len(p.Accounts) }

// Fanout is how many webhooks expect event e.
func (p *Plan) Fanout(e int) int { return len(p.Accounts[p.EventAccount(e)]) }

// AddAccount appends an account with one webhook per behaviour, on the
// given servers and of the given application, and returns its index.
func (p *Plan) AddAccount(app int32, servers []int, bs []EndpointBehaviour) int {
	acc := int32(len(p.Accounts))
	hooks := make([]int32, len(bs))
	for i, b := range bs {
		hooks[i] = int32(len(p.Hooks))
		p.Hooks = append(p.Hooks, PlanHook{App: app, Account: acc, Pos: int32(i), Server: servers[i], Behaviour: b})
	}
	p.Accounts = append(p.Accounts, hooks)
	return int(acc)
}

// MeanFanout is how many webhooks an event reaches on average.
func (p *Plan) MeanFanout() float64 {
	if len(p.Accounts) == 0 {
		return 0
	}
	return float64(len(p.Hooks)) / float64(len(p.Accounts))
}

// PairCounter returns how many (event, webhook) pairs events 0 to n-1 make
// with the webhooks keep accepts (nil: every webhook). The counts per
// account are taken once, so each call costs O(1) (the flood's gate asks
// every millisecond).
func (p *Plan) PairCounter(keep func(h *PlanHook) bool) func(n int) int64 {
	per := make([]int64, len(p.Accounts)+1) // per[a]: pairs of accounts before a
	for a, hooks := range p.Accounts {
		c := int64(0)
		for _, hi := range hooks {
			if keep == nil || keep(&p.Hooks[hi]) {
				c++
			}
		}
		per[a+1] = per[a] + c
	}
	accounts := len(p.Accounts)
	return func(n int) int64 {
		if accounts == 0 || n <= 0 {
			return 0
		}
		return int64(n/accounts)*per[accounts] + per[n%accounts]
	}
}
