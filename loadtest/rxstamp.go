package loadtest

// This file takes a farm request's arrival time from the kernel: the farm's
// connections ask for SO_TIMESTAMPNS and read through recvmsg, which hands
// back, beside the bytes, the instant the kernel received the segment the
// read ended with. A request's arrival is then when its last bytes reached
// the farm's host, not when the farm's goroutine got a core to read them:
// on a busy machine the two differ by the farm's own scheduling delay,
// which is no part of geckohook's latency.

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// stampListener hands out connections that keep their receive timestamps.
type stampListener struct{ net.Listener }

// stamping wraps a farm server's listener; a connection that cannot have
// timestamps (not TCP, or the option is refused) is served as it is.
func stamping(ln net.Listener) net.Listener { return stampListener{ln} }

func (l stampListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if sc := newStampConn(tc); sc != nil {
			return sc, nil
		}
	}
	return c, nil
}

// stampConn is a TCP connection whose reads go through recvmsg and keep
// the kernel's receive time of the data last read. Its methods other than
// Read are the TCPConn's (SetLinger included).
type stampConn struct {
	*net.TCPConn
	raw  syscall.RawConn
	recv func(fd uintptr) bool // c.recvmsg, bound once: a read allocates nothing
	// the read in progress, for recv
	p   []byte
	n   int
	err error
	oob [8]uint64 // control messages (8-byte aligned, as cmsg headers need)
	// at is the receive time (unix ns) of the data the last read returned;
	// 0 before any, or when it came without one.
	at atomic.Int64
}

// newStampConn turns timestamps on for tc; nil if it cannot.
func newStampConn(tc *net.TCPConn) *stampConn {
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		return nil
	}
	c := &stampConn{TCPConn: tc, raw: raw}
	c.recv = c.recvmsg
	return c
}

// Read is net.Conn's Read through recvmsg, honouring the deadlines.
func (c *stampConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.p = p
	err := c.raw.Read(c.recv)
	n, rerr := c.n, c.err
	c.p, c.n, c.err = nil, 0, nil
	if err == nil {
		err = rerr
	}
	switch {
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// WriteTo copies through Read, so that no read bypasses recvmsg (the
// TCPConn's own WriteTo would splice, keeping no time).
func (c *stampConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}

// recvmsg is one read attempt on the non-blocking socket; false asks the
// poller to wait until it is readable.
func (c *stampConn) recvmsg(fd uintptr) bool {
	oob := unsafe.Slice((*byte)(unsafe.Pointer(&c.oob[0])), len(c.oob)*8)
	for {
		n, oobn, _, _, err := syscall.Recvmsg(int(fd), c.p, oob, 0)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if errors.Is(err, syscall.EAGAIN) {
			return false
		}
		if err != nil {
			c.err = os.NewSyscallError("recvmsg", err)
			return true
		}
		c.n = max(n, 0)
		if n > 0 {
			// 0 when the segment has no time: the kernel turns
			// timestamps on a moment after the first socket asks.
			c.at.Store(rxTime(oob[:oobn]))
		}
		return true
	}
}

// rxTime is the SCM_TIMESTAMPNS time in control messages b (unix ns), 0
// when there is none. b starts 8-byte aligned, as the kernel writes it.
func rxTime(b []byte) int64 {
	const hdr = syscall.SizeofCmsghdr
	for len(b) >= hdr {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < hdr || l > len(b) {
			return 0
		}
		if h.Level == syscall.SOL_SOCKET && h.Type == syscall.SCM_TIMESTAMPNS && l >= hdr+int(unsafe.Sizeof(syscall.Timespec{})) {
			return (*syscall.Timespec)(unsafe.Pointer(&b[hdr])).Nano()
		}
		next := (l + 7) &^ 7
		if next >= len(b) {
			return 0
		}
		b = b[next:]
	}
	return 0
}

// arrivedAt is when the request being handled on conn reached the farm's
// host: the kernel's receive time of the read that completed it, never
// later than now (the handler's clock); now when conn keeps no times or
// that read came without one.
func arrivedAt(conn net.Conn, now time.Time) time.Time {
	sc, ok := conn.(*stampConn)
	if !ok {
		return now
	}
	at := sc.at.Load()
	if at == 0 || at > now.UnixNano() {
		return now
	}
	return time.Unix(0, at)
}
