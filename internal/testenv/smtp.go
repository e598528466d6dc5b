package testenv

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Mail is one message an SMTPSink accepted.
type Mail struct {
	From string
	To   []string
	Data []byte
}

// SMTPSink is a real SMTP server (github.com/emersion/go-smtp) on a free
// loopback port that keeps what it accepts. Down and Up stop and restart it
// on the same address, to test a mail server outage.
type SMTPSink struct {
	Addr string
	t    testing.TB

	mu   sync.Mutex
	srv  *smtp.Server
	mail []Mail
}

// SMTP starts a sink, stopped when the test ends.
func SMTP(t testing.TB) *SMTPSink {
	t.Helper()
	s := &SMTPSink{t: t}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = ln.Addr().String()
	s.serve(ln)
	t.Cleanup(s.Down)
	return s
}

func (s *SMTPSink) serve(ln net.Listener) {
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: s}, nil
	}))
	srv.Domain = "localhost"
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	srv.MaxMessageBytes = 10 << 20
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// Down stops the server: connections are refused until Up.
func (s *SMTPSink) Down() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// Up starts the server again on the same address.
func (s *SMTPSink) Up() {
	s.t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", s.Addr); err == nil {
			s.serve(ln)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.t.Fatalf("cannot restart SMTP sink on %s: %v", s.Addr, err)
}

// Mail returns a copy of what was accepted so far.
func (s *SMTPSink) Mail() []Mail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Mail(nil), s.mail...)
}

// To returns the accepted messages addressed to rcpt.
func (s *SMTPSink) To(rcpt string) []Mail {
	var out []Mail
	for _, m := range s.Mail() {
		for _, r := range m.To {
			if r == rcpt {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

type sinkSession struct {
	s    *SMTPSink
	from string
	to   []string
}

func (x *sinkSession) Reset()        { x.from, x.to = "", nil }
func (x *sinkSession) Logout() error { return nil }
func (x *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	x.from = from
	return nil
}
func (x *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	x.to = append(x.to, to)
	return nil
}
func (x *sinkSession) Data(r io.Reader) error {
	var b bytes.Buffer
	if _, err := io.Copy(&b, r); err != nil {
		return err
	}
	if len(x.to) == 0 {
		return errors.New("no recipients")
	}
	x.s.mu.Lock()
	x.s.mail = append(x.s.mail, Mail{From: x.from, To: append([]string(nil), x.to...), Data: b.Bytes()})
	x.s.mu.Unlock()
	return nil
}
