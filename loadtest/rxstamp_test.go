package loadtest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// stampPair is a client connection and the server side of it, accepted
// through a stamping listener.
func stampPair(t *testing.T) (client net.Conn, server *stampConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl := stamping(ln)
	t.Cleanup(func() { _ = sl.Close() })
	client, err = net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	c, err := sl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	sc, ok := c.(*stampConn)
	if !ok {
		t.Fatalf("accepted a %T, want a *stampConn", c)
	}
	return client, sc
}

// The time a read keeps is the kernel's: after the sender began writing,
// before its write returned, and so before the reader got to read.
func TestStampConnKeepsReceiveTime(t *testing.T) {
	client, server := stampPair(t)
	if got := arrivedAt(server, time.Now()); got.IsZero() {
		t.Fatal("no arrival time before any read")
	}
	buf := make([]byte, 64)
	// The kernel turns timestamps on a moment after the first socket asks
	// (deferred work); until then reads carry none and the arrival is the
	// reader's clock.
	deadline := time.Now().Add(5 * time.Second)
	for server.at.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no read carried a receive time within 5 s")
		}
		if _, err := client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := server.Read(buf); err != nil {
			t.Fatal(err)
		}
		if server.at.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	for i := range 3 {
		sent := time.Now()
		if _, err := client.Write([]byte("POST /h/0 HTTP/1.1\r\n")); err != nil {
			t.Fatal(err)
		}
		written := time.Now()
		n, err := server.Read(buf)
		if err != nil || n != 20 {
			t.Fatalf("read %d bytes: %v", n, err)
		}
		read := time.Now()
		at := arrivedAt(server, read)
		if at.Before(sent) || at.After(written) {
			t.Fatalf("write %d: arrival %v, want between the write's start %v and its return %v (read at %v)",
				i, at.UnixNano(), sent.UnixNano(), written.UnixNano(), read.UnixNano())
		}
		// never after the handler's own clock
		if early := sent.Add(-time.Microsecond); !arrivedAt(server, early).Equal(early) {
			t.Fatalf("arrival %v is after now %v", arrivedAt(server, early), early)
		}
	}
}

// Reads honour deadlines and end with io.EOF, as a TCPConn's do, so
// fasthttp's idle and read timeouts still work.
func TestStampConnDeadlineAndEOF(t *testing.T) {
	client, server := stampPair(t)
	if err := server.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	_, err := server.Read(buf)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	if err := server.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = client.Close()
	if n, err := server.Read(buf); n != 1 || err != nil {
		t.Fatalf("read %d, %v; want the 1 byte sent", n, err)
	}
	if n, err := server.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read %d, %v after the peer closed; want io.EOF", n, err)
	}
	// a copy reads through recvmsg too: the time moves on
	before := server.at.Load()
	client2, server2 := stampPair(t)
	if _, err := client2.Write([]byte("copied")); err != nil {
		t.Fatal(err)
	}
	_ = client2.Close()
	var sink bytes.Buffer
	if n, err := io.Copy(&sink, server2); n != 6 || err != nil || sink.String() != "copied" {
		t.Fatalf("copied %d bytes (%q): %v", n, sink.String(), err)
	}
	if server2.at.Load() == 0 && before != 0 {
		t.Fatal("a copy kept no receive time")
	}
	if err := server.SetLinger(0); err != nil {
		t.Fatalf("SetLinger: %v", err)
	}
}

func TestStampConnReadAllocs(t *testing.T) {
	client, server := stampPair(t)
	msg, buf := []byte("0123456789"), make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(server, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per write and read, want 0", allocs)
	}
}

// A farm request's recorded arrival is not earlier than its send and not
// later than the handler's clock (the answer time, with no delay).
func TestFarmArrivalFromKernel(t *testing.T) {
	p := oneHookPlan(EndpointBehaviour{})
	f := newTestFarm(t, 1)
	l := serveLedger(f, p, 1, 0)
	produced := time.Now()
	l.Produced(0, produced)
	c := &fasthttp.Client{}
	sent := time.Now()
	if s := sendEvent(t, c, p, 0, 0, "s3cret"); s != 200 {
		t.Fatalf("status %d", s)
	}
	answered := time.Since(produced)
	own, lat := l.Own(), l.Latency()
	if own.Count != 1 || lat.Count != 1 {
		t.Fatalf("own %+v, latency %+v: want one request each", own, lat)
	}
	// The ledger keeps the produce time on the monotonic clock and the
	// kernel's arrival on the wall clock: allow a slewing clock 1 ms.
	const slew = time.Millisecond
	if own.Max < sent.Sub(produced)-slew || own.Max > lat.Max || lat.Max > answered {
		t.Fatalf("own %v, latency %v; want send (%v) <= own <= latency <= answer (%v)",
			own.Max, lat.Max, sent.Sub(produced), answered)
	}
}
