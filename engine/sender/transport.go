package sender

import (
	"errors"
	"io"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// transport is the client's fasthttp.RoundTripper: fasthttp's own
// DefaultTransport (client.go) without response streaming, and with its
// own rule for sending a request again.
//
// fasthttp decides retries in HostClient.Do from the error alone: its
// transport asks for a retry after nearly every error, on any connection,
// and RetryIfErr sees neither whether the connection came from the idle pool
// nor whether the request had been written. The io.EOF a pooled connection
// closed by the server while idle gives is the same io.EOF a receiver gives
// that read the whole request and hung up without answering; re-sending on
// it delivered that webhook twice in one attempt. So fasthttp's retries are
// off (RetryIfErr always says no) and this transport sends a request again
// only after a pooled connection that took not one byte of it:
//
//   - Before writing on a connection taken from the idle pool, it looks at
//     the socket without reading (closedWhileIdle). If the server has
//     already closed or reset it, or sent bytes nobody asked for, the
//     connection is closed unused and the request goes out on another.
//   - If the first write on a pooled connection fails with nothing written
//     (the server's reset came between that look and the write, or the
//     platform has no such look), the connection is closed and the request
//     goes out on another.
//
// Anything else ends the attempt with its error, and the dispatcher tries
// again on its schedule: a write that got part of the request out, a
// connection closed after the whole request was written, any error on a
// freshly dialled connection (it says something about the receiver, not
// about a stale pool), a timeout. Each re-send closes one pooled connection,
// so the loop ends when the pool is empty at the latest, and the attempt's
// deadline bounds it too.
//
// The one case left to chance is a server closing an idle connection in the
// microseconds between the look and the write with a FIN: the request is
// then written and fails like any unanswered one (net/http leaves the same
// window open for requests it cannot replay).
type transport struct{}

var errStreaming = errors.New("sender: streamed response bodies are not supported")

func (transport) RoundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response) (bool, error) {
	if hc.StreamResponseBody || resp.StreamBody {
		return false, errStreaming
	}
	timeout := req.GetTimeOut() // what is left of the attempt's deadline
	// One clock reading per try, two when it dials: the write and read
	// deadlines run from it, so a wait for a pooled connection makes them
	// that much earlier, never later than the attempt's deadline.
	now := time.Now()
	var deadline time.Time
	if timeout > 0 {
		deadline = now.Add(timeout)
	}
	for first := true; ; first = false {
		if !first {
			now = time.Now()
		}
		wait := timeout
		if timeout > 0 {
			if wait = deadline.Sub(now); wait <= 0 {
				return false, fasthttp.ErrTimeout
			}
		}
		cc, err := hc.AcquireConn(wait, req.ConnectionClose())
		if err != nil {
			return false, err
		}
		// fasthttp stamps a connection's last use when it goes back to the
		// pool; a freshly dialled one has none.
		pooled := !cc.LastUseTime().IsZero()
		if !pooled {
			now = time.Now() // after the dial
		}
		tc := trackedOf(cc.Conn())
		if pooled && tc != nil && tc.closedWhileIdle() {
			hc.CloseConn(cc)
			continue
		}
		if tc != nil {
			tc.startRequest()
		}

		conn := cc.Conn()
		resp.ParseNetConn(conn)
		closeAfter, err := writeRequest(hc, conn, req, now, deadline, cc.CreatedTime())
		if err != nil {
			hc.CloseConn(cc)
			if pooled && tc != nil && tc.writeFailedUnsent() {
				continue
			}
			return false, err
		}
		if err = readResponse(hc, conn, req, resp, now, deadline); err != nil {
			hc.CloseConn(cc)
			return false, err
		}
		if closeAfter || req.ConnectionClose() || resp.ConnectionClose() {
			hc.CloseConn(cc)
		} else {
			hc.ReleaseConn(cc)
		}
		return false, nil
	}
}

// writeRequest writes req to conn, starting at now. closeAfter is set when
// the connection has reached MaxConnDuration and the request asked the
// server to close it.
func writeRequest(hc *fasthttp.HostClient, conn net.Conn, req *fasthttp.Request, now, deadline, created time.Time) (closeAfter bool, err error) {
	if err = conn.SetWriteDeadline(earliest(now, deadline, hc.WriteTimeout)); err != nil {
		return false, err
	}
	if hc.MaxConnDuration > 0 && now.Sub(created) > hc.MaxConnDuration && !req.ConnectionClose() {
		req.SetConnectionClose()
		defer req.Header.ResetConnectionClose()
		closeAfter = true
	}
	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	if te, ok := err.(interface{ Timeout() bool }); ok && te.Timeout() {
		err = fasthttp.ErrTimeout
	}
	return closeAfter, err
}

// readResponse reads the answer to req from conn; the request was written
// from now on.
func readResponse(hc *fasthttp.HostClient, conn net.Conn, req *fasthttp.Request, resp *fasthttp.Response, now, deadline time.Time) error {
	if err := conn.SetReadDeadline(earliest(now, deadline, hc.ReadTimeout)); err != nil {
		return err
	}
	if req.Header.IsHead() {
		resp.SkipBody = true
	}
	if hc.DisableHeaderNamesNormalizing {
		resp.Header.DisableNormalizing()
	}
	br := hc.AcquireReader(conn)
	err := resp.ReadLimitBody(br, hc.MaxResponseBodySize)
	hc.ReleaseReader(br)
	if err == io.EOF { // fasthttp's word for any error on the first byte but a timeout
		err = errUnanswered
	}
	return err
}

// earliest is deadline or now+d, whichever comes first; d <= 0 means none.
func earliest(now, deadline time.Time, d time.Duration) time.Time {
	if d <= 0 {
		return deadline
	}
	if t := now.Add(d); deadline.IsZero() || t.Before(deadline) {
		return t
	}
	return deadline
}

// errUnanswered: the whole request was written, then the receiver closed or
// reset the connection before the first byte of an answer. It is
// fasthttp.ErrConnectionClosed to errors.Is.
var errUnanswered error = unansweredError{}

type unansweredError struct{}

func (unansweredError) Error() string {
	return "the receiver closed the connection without answering after the request was sent"
}

func (unansweredError) Is(target error) bool { return target == fasthttp.ErrConnectionClosed }

// trackedConn is the TCP connection under every request, under TLS too. It
// records what the current request's writes handed to the kernel, and can
// tell without reading whether the server closed the connection while it
// sat idle (closedWhileIdle, per platform). A connection is used by one
// request at a time, and fasthttp's pool hands it over under a lock, so the
// fields need no locking.
type trackedConn struct {
	net.Conn
	sent     int   // bytes the current request's writes handed to the kernel
	writeErr error // the current request's first failed write

	probe // the platform's idle check
}

// track wraps a freshly dialled connection.
func track(c net.Conn) net.Conn {
	tc := &trackedConn{Conn: c}
	tc.probe.setup(c)
	return tc
}

// trackedOf finds the trackedConn under c (a tls.Conn hands out its own).
func trackedOf(c net.Conn) *trackedConn {
	if nc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = nc.NetConn()
	}
	tc, _ := c.(*trackedConn)
	return tc
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.sent += n
	if err != nil && c.writeErr == nil {
		c.writeErr = err
	}
	return n, err
}

func (c *trackedConn) startRequest() { c.sent, c.writeErr = 0, nil }

// writeFailedUnsent reports whether a write of the current request failed
// before any of its bytes reached the kernel.
func (c *trackedConn) writeFailedUnsent() bool { return c.writeErr != nil && c.sent == 0 }
