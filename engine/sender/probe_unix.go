//go:build linux || darwin || dragonfly || freebsd || netbsd || openbsd

package sender

import (
	"net"
	"syscall"
)

// probe looks at an idle connection's socket without reading from it.
type probe struct {
	raw  syscall.RawConn  // nil when the connection has no descriptor
	look func(fd uintptr) // p.peek, bound once so a look does not allocate
	gone bool             // what the last look found
	buf  [1]byte
}

func (p *probe) setup(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	p.raw, p.look = raw, p.peek
}

// closedWhileIdle reports whether the server has closed or reset the idle
// connection, or sent something nobody asked for (the "408 Request Timeout"
// some servers write before closing, a TLS close_notify). No answer to a
// request written now could come back on such a connection, so it is closed
// unused. A non-blocking MSG_PEEK leaves any bytes where they are; only
// "nothing to read yet" means the connection is fit for a request. When the
// look cannot be made, the connection is used as it is.
func (p *probe) closedWhileIdle() bool {
	if p.raw == nil {
		return false
	}
	p.gone = false
	if p.raw.Control(p.look) != nil {
		return false
	}
	return p.gone
}

func (p *probe) peek(fd uintptr) {
	// n == 0 with no error is the server's FIN; n > 0 is unsolicited data;
	// ECONNRESET and the like are a reset.
	_, _, err := syscall.Recvfrom(int(fd), p.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	p.gone = err != syscall.EAGAIN && err != syscall.EWOULDBLOCK && err != syscall.EINTR
}
