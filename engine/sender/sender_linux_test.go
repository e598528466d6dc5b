package sender

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// blackhole returns the address of a loopback listener whose accept queue is
// full (backlog 0, one connection queued and never accepted): Linux drops
// further SYNs, so a dial hangs like one to a firewalled host.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "blackhole")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	addr := ln.Addr().String()
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return addr // full: this dial hung
			}
			t.Fatalf("filling the accept queue: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		if i == 8 {
			t.Skip("accept queue never filled; cannot simulate a dropped SYN here")
		}
	}
}

func TestSendDialTimeout(t *testing.T) {
	addr := blackhole(t)
	const timeout = 300 * time.Millisecond
	s := New(Options{Policy: devPolicy, Timeout: timeout})
	start := time.Now()
	res := s.Send("http://"+addr+"/", testBody, testID, testSig)
	elapsed := time.Since(start)
	wantTransportFailure(t, res, "timeout")
	if elapsed >= 3*time.Second {
		t.Fatalf("Send took %v with a %v timeout", elapsed, timeout)
	}
}

// waitClientSawClose waits until the kernel no longer lists the client's end
// of serverSide (a connection the server closed) as established: the
// client's socket has taken the FIN (CLOSE_WAIT) or the reset (gone). On
// loopback that is almost always so by the time close returns, but not
// always, and a Send racing it would test something else.
func waitClientSawClose(t *testing.T, serverSide net.Conn) {
	t.Helper()
	client := procAddr(t, serverSide.RemoteAddr())
	server := procAddr(t, serverSide.LocalAddr())
	deadline := time.Now().Add(5 * time.Second)
	for {
		table, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			t.Fatal(err)
		}
		established := false
		for _, line := range strings.Split(string(table), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) > 3 && f[1] == client && f[2] == server {
				established = f[3] == "01"
				break
			}
		}
		if !established {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("client end %v still established 5s after the server closed", serverSide.RemoteAddr())
		}
		time.Sleep(time.Millisecond)
	}
}

// procAddr spells an IPv4 address as /proc/net/tcp does: the address as the
// host reads the four bytes, then the port, both in hexadecimal.
func procAddr(t *testing.T, a net.Addr) string {
	t.Helper()
	ta := a.(*net.TCPAddr)
	ip4 := ta.IP.To4()
	if ip4 == nil {
		t.Fatalf("%v is not IPv4", a)
	}
	return fmt.Sprintf("%08X:%04X", binary.NativeEndian.Uint32(ip4), ta.Port)
}

// TestSendStalePooledConnection: the server answers a request with
// keep-alive and then ends that connection itself while it sits idle in the
// client's pool. It shuts down only its sending side and keeps reading, so
// it sees whatever the client still writes there. The next Send must find
// the connection closed before writing to it, leave it unused, and succeed
// on a fresh one: one request for the attempt.
func TestSendStalePooledConnection(t *testing.T) {
	var requests, connNo atomic.Int64
	halfClosed := make(chan net.Conn, 1)
	late := make(chan int, 1) // requests read on the first connection after its FIN
	base, conns := serveRaw(t, func(c net.Conn) {
		defer c.Close()
		first := connNo.Add(1) == 1
		br := bufio.NewReader(c)
		for {
			if _, _, err := readRequest(br); err != nil {
				return
			}
			requests.Add(1)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
			if first {
				break
			}
		}
		_ = c.(*net.TCPConn).CloseWrite()
		halfClosed <- c
		n := 0
		for {
			if _, _, err := readRequest(br); err != nil {
				late <- n // the client closed its end
				return
			}
			requests.Add(1)
			n++
		}
	})

	s := New(Options{Policy: devPolicy, Timeout: 5 * time.Second})
	wantSuccess(t, s.Send(base+"/", testBody, testID, testSig), 200)
	select {
	case c := <-halfClosed:
		waitClientSawClose(t, c)
	case <-time.After(5 * time.Second):
		t.Fatal("server did not close its connection")
	}

	wantSuccess(t, s.Send(base+"/", testBody, testID, testSig), 200)
	select {
	case n := <-late:
		if n != 0 {
			t.Errorf("the client wrote %d request(s) on the connection after the server closed it", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client kept the closed connection open")
	}
	if n := requests.Load() - 1; n != 1 {
		t.Errorf("server read %d requests for the second attempt, want 1", n)
	}
	if n := conns.accepted.Load(); n != 2 {
		t.Errorf("server accepted %d connections, want 2", n)
	}
}

// TestSendWithoutIdleCheck: without the look at an idle socket (a platform
// lacking it, or a server closing in the instant between the look and the
// write), a pooled connection the server reset fails the first write before
// a byte leaves, and the request goes out once on a fresh connection; one
// the server merely closed takes the whole request, so its failure ends the
// attempt.
func TestSendWithoutIdleCheck(t *testing.T) {
	f := func(t *testing.T, reset bool) {
		t.Helper()
		var requests, connNo atomic.Int64
		closed := make(chan net.Conn, 1)
		base, conns := serveRaw(t, func(c net.Conn) {
			defer c.Close()
			first := connNo.Add(1) == 1
			br := bufio.NewReader(c)
			for {
				if _, _, err := readRequest(br); err != nil {
					return
				}
				requests.Add(1)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
				if first {
					break
				}
			}
			if reset {
				_ = c.(*net.TCPConn).SetLinger(0)
			}
			c.Close()
			closed <- c
		})
		s := New(Options{Policy: devPolicy, Timeout: 5 * time.Second})
		s.c.DialTimeout = func(addr string, timeout time.Duration) (net.Conn, error) {
			c, err := net.DialTimeout("tcp", addr, timeout)
			if err != nil {
				return nil, err
			}
			return track(struct{ net.Conn }{c}), nil // no descriptor to look at
		}

		wantSuccess(t, s.Send(base+"/", testBody, testID, testSig), 200)
		select {
		case c := <-closed:
			waitClientSawClose(t, c)
		case <-time.After(5 * time.Second):
			t.Fatal("server did not close its connection")
		}
		res := s.Send(base+"/", testBody, testID, testSig)
		wantConns := int64(1)
		if reset {
			wantSuccess(t, res, 200)
			wantConns = 2
		} else {
			ae := wantTransportFailure(t, res, "connection")
			if !errors.Is(ae, fasthttp.ErrConnectionClosed) {
				t.Errorf("err = %v, want it to be fasthttp.ErrConnectionClosed", ae)
			}
		}
		// The server closed its end before the client wrote, so it read
		// nothing there.
		if n := requests.Load(); n != wantConns {
			t.Errorf("server read %d requests, want %d", n, wantConns)
		}
		if n := conns.accepted.Load(); n != wantConns {
			t.Errorf("server accepted %d connections, want %d", n, wantConns)
		}
	}
	t.Run("reset", func(t *testing.T) { f(t, true) })
	t.Run("closed", func(t *testing.T) { f(t, false) })
}

// TestSendStalePooledTLSConnection: over TLS the connection is reused as
// usual (nothing the handshake leaves behind, such as session tickets, makes
// it look stale), and one the server closed while idle (a close_notify, then
// FIN) is left unused for a fresh one.
func TestSendStalePooledTLSConnection(t *testing.T) {
	certPEM, keyPEM, err := fasthttp.GenerateTestCertificate("localhost")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)

	const reused = 5 // requests answered on the first connection
	var requests, connNo atomic.Int64
	closed := make(chan net.Conn, 1)
	base, conns := serveRaw(t, func(c net.Conn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
		defer tc.Close()
		first := connNo.Add(1) == 1
		br := bufio.NewReader(tc)
		for i := 1; ; i++ {
			if _, _, err := readRequest(br); err != nil {
				return
			}
			requests.Add(1)
			_, _ = io.WriteString(tc, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok")
			if first && i == reused {
				break
			}
		}
		tc.Close() // close_notify, then FIN
		closed <- c
	})
	addr := "https://" + strings.TrimPrefix(base, "http://") + "/"

	s := New(Options{Policy: devPolicy, Timeout: 5 * time.Second})
	s.c.TLSConfig = &tls.Config{RootCAs: roots, ServerName: "localhost"}
	for i := 0; i < reused; i++ {
		wantSuccess(t, s.Send(addr, testBody, testID, testSig), 200)
	}
	if n := conns.accepted.Load(); n != 1 {
		t.Fatalf("%d sends over TLS used %d connections, want 1", reused, n)
	}
	select {
	case c := <-closed:
		waitClientSawClose(t, c)
	case <-time.After(5 * time.Second):
		t.Fatal("server did not close its connection")
	}
	wantSuccess(t, s.Send(addr, testBody, testID, testSig), 200)
	if n := requests.Load(); n != reused+1 {
		t.Errorf("server read %d requests, want %d", n, reused+1)
	}
	if n := conns.accepted.Load(); n != 2 {
		t.Errorf("server accepted %d connections, want 2", n)
	}
}
