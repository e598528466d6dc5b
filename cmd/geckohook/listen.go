package main

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// listener is an address a part serves, bound before any part starts.
type listener struct {
	what string        // "the API", for the error
	addr string        // host:port
	ln   *net.Listener // where the bound listener goes
}

// earlyError is a failure before any part started and anything was
// printed: run prints it as one plain line.
type earlyError struct{ error }

// bind opens the listener of every part this process runs, before any
// part starts: a taken port fails at once, with nothing to undo, instead
// of after the embedded services, Kafka and Redis came up. unbind closes
// them all (those the parts' Serve closed already included).
func (p *process) bind(table []part) (unbind func(), err error) {
	var bound []net.Listener
	unbind = func() {
		for _, ln := range bound {
			_ = ln.Close()
		}
	}
	for _, pt := range table {
		if pt.listen == nil || !p.runs(pt) {
			continue
		}
		l := pt.listen
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			unbind()
			return nil, earlyError{fmt.Errorf("cannot listen on %s for %s: %w", l.addr, l.what, listenCause(err))}
		}
		*l.ln = ln
		bound = append(bound, ln)
	}
	return unbind, nil
}

// listenCause strips "listen tcp 127.0.0.1:8080: bind: " from a listen
// error, which the message already says.
func listenCause(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		err = se.Err
	}
	return err
}
