package loadtest

// This file is how a farm server refuses connections (EndpointBehaviour's
// RefuseUntil): its listener is closed, so a connect to its port is
// refused by the kernel, and the connections it holds are dropped, so a
// client's pooled ones fail too; when the refusal ends it listens on the
// same port again.

import (
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// relistenEvery is how often a server whose port is briefly taken tries
// to listen again.
const relistenEvery = 100 * time.Millisecond

// serverGate is one farm server's listener and open connections.
type serverGate struct {
	mu     sync.Mutex
	ln     *gateListener // nil while refusing
	conns  map[net.Conn]struct{}
	until  time.Time   // refusing until this instant
	timer  *time.Timer // listens again at until
	closed bool        // the farm is closing: never listen again
}

// gateListener is a listener whose Close may be called more than once
// (the farm closes it on refusal, fasthttp again on shutdown).
type gateListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *gateListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// track follows the server's connections (fasthttp's ConnState hook): it
// acts only when one opens or closes, never per request.
func (g *serverGate) track(c net.Conn, st fasthttp.ConnState) {
	switch st {
	case fasthttp.StateNew:
		g.mu.Lock()
		g.conns[c] = struct{}{}
		g.mu.Unlock()
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		g.mu.Lock()
		delete(g.conns, c)
		g.mu.Unlock()
	}
}

// refuseServers starts or extends the refusal of every server one of
// whose hooks has a RefuseUntil in the future. Call it with f.mu held.
func (f *Farm) refuseServers(st *farmState) {
	now := time.Now()
	until := make(map[int32]time.Time)
	for i := range st.hooks {
		h := &st.hooks[i]
		if h.b.RefuseUntil.After(now) && h.b.RefuseUntil.After(until[h.server]) && int(h.server) < len(f.gates) {
			until[h.server] = h.b.RefuseUntil
		}
	}
	for srv, u := range until {
		f.refuse(int(srv), u)
	}
}

// refuse closes server i's listener and connections until until.
func (f *Farm) refuse(i int, until time.Time) {
	g := f.gates[i]
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	if until.After(g.until) {
		g.until = until
	}
	if g.ln != nil {
		_ = g.ln.Close()
		g.ln = nil
		for c := range g.conns {
			_ = c.Close() // its serving goroutine ends and reports it closed
		}
	}
	if g.timer == nil {
		g.timer = time.AfterFunc(time.Until(g.until), func() { f.relisten(i) })
	} else {
		g.timer.Reset(time.Until(g.until))
	}
}

// relisten ends server i's refusal once its time has come: it listens on
// the same port again and serves.
func (f *Farm) relisten(i int) {
	g := f.gates[i]
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.ln != nil {
		return
	}
	if d := time.Until(g.until); d > 0 {
		g.timer.Reset(d)
		return
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(f.ports[i]))
	if err != nil {
		// The port is briefly someone else's (a client's ephemeral
		// port): try again soon. The scenario's accounting shows it if
		// the server never comes back.
		g.timer.Reset(relistenEvery)
		return
	}
	g.ln = &gateListener{Listener: stamping(ln)}
	s, gl := f.servers[i], g.ln
	f.served.Go(func() { _ = s.Serve(gl) })
}

// stopRefusals makes sure no server listens again: Close calls it first.
func (f *Farm) stopRefusals() {
	for _, g := range f.gates {
		g.mu.Lock()
		g.closed = true
		if g.timer != nil {
			g.timer.Stop()
		}
		g.mu.Unlock()
	}
}

// closeGates closes every server's current listener.
func (f *Farm) closeGates() {
	for _, g := range f.gates {
		g.mu.Lock()
		if g.ln != nil {
			_ = g.ln.Close()
		}
		g.mu.Unlock()
	}
}
