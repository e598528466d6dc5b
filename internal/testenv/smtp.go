package testenv

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Mail is one message an SMTPSink accepted.
type Mail struct {
	From string
	To   []string
	Data []byte
	TLS  bool   // it came over TLS (STARTTLS)
	User string // the user it authenticated as
}

// SMTPOptions make a sink offer STARTTLS and require authentication.
type SMTPOptions struct {
	TLS            *tls.Config // offer STARTTLS with this certificate
	User, Password string      // require AUTH PLAIN with these
}

// SMTPSink is a real SMTP server (github.com/emersion/go-smtp) on a free
// loopback port that keeps what it accepts. Down and Up stop and restart it
// on the same address, to test a mail server outage.
type SMTPSink struct {
	Addr string
	t    testing.TB
	o    SMTPOptions

	mu   sync.Mutex
	srv  *smtp.Server
	mail []Mail
}

// SMTP starts a sink, stopped when the test ends.
func SMTP(t testing.TB) *SMTPSink { return SMTPWith(t, SMTPOptions{}) }

// SMTPWith starts a sink with options.
func SMTPWith(t testing.TB, o SMTPOptions) *SMTPSink {
	t.Helper()
	s := &SMTPSink{t: t, o: o}
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
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: s, c: c}, nil
	}))
	srv.TLSConfig = s.o.TLS
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
	c    *smtp.Conn
	user string
	from string
	to   []string
}

func (x *sinkSession) AuthMechanisms() []string {
	if x.s.o.User == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (x *sinkSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != x.s.o.User || pass != x.s.o.Password {
			return smtp.ErrAuthFailed
		}
		x.user = user
		return nil
	}), nil
}

func (x *sinkSession) Reset()        { x.from, x.to = "", nil }
func (x *sinkSession) Logout() error { return nil }
func (x *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	if x.s.o.User != "" && x.user == "" {
		return smtp.ErrAuthRequired
	}
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
	_, isTLS := x.c.TLSConnectionState()
	x.s.mail = append(x.s.mail, Mail{From: x.from, To: append([]string(nil), x.to...), Data: b.Bytes(), TLS: isTLS, User: x.user})
	x.s.mu.Unlock()
	return nil
}

// SelfSignedTLS returns a server certificate for 127.0.0.1 and localhost
// and a client config trusting it.
func SelfSignedTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		&tls.Config{RootCAs: pool}
}
