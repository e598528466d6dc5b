package mail

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// errPermanent marks a send the server refused for good (a 5xx answer to
// the recipient or the message): retrying the same mail cannot help.
var errPermanent = errors.New("refused permanently")

// sendFunc delivers one rendered message; name identifies it (day and app)
// for the outbox.
type sendFunc func(ctx context.Context, from, to string, msg []byte, name string) error

// smtpSender sends over SMTP with STARTTLS whenever the server offers it.
type smtpSender struct {
	addr, user, password string
	tlsConfig            *tls.Config // nil: system roots
	// tls: 0 not probed yet, 1 offered, 2 not offered.
	tls atomic.Int32
}

func (s *smtpSender) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to SMTP server %s: %w", s.addr, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(2 * time.Minute)
	}
	_ = conn.SetDeadline(deadline)
	return conn, nil
}

func (s *smtpSender) client(ctx context.Context) (*smtp.Client, bool, error) {
	host, _, _ := net.SplitHostPort(s.addr)
	if s.tls.Load() != 2 {
		conn, err := s.dial(ctx)
		if err != nil {
			return nil, false, err
		}
		if s.tls.Load() == 1 {
			cfg := &tls.Config{}
			if s.tlsConfig != nil {
				cfg = s.tlsConfig.Clone()
			}
			cfg.ServerName, cfg.MinVersion = host, tls.VersionTLS12
			c, err := smtp.NewClientStartTLS(conn, cfg)
			if err != nil {
				return nil, false, fmt.Errorf("cannot start TLS with SMTP server %s: %w", s.addr, err)
			}
			return c, true, nil
		}
		// First connection: see whether STARTTLS is offered.
		c := smtp.NewClient(conn)
		if ok, _ := c.Extension("STARTTLS"); !ok {
			s.tls.Store(2)
			return c, false, nil
		}
		_ = c.Close()
		s.tls.Store(1)
		return s.client(ctx)
	}
	conn, err := s.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	return smtp.NewClient(conn), false, nil
}

func (s *smtpSender) send(ctx context.Context, from, to string, msg []byte, _ string) error {
	c, secure, err := s.client(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if s.user != "" {
		host, _, _ := net.SplitHostPort(s.addr)
		if ip := net.ParseIP(host); !secure && (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			return fmt.Errorf("cannot authenticate to SMTP server %s: it offers no STARTTLS and the password would travel in clear", s.addr)
		}
		if err := c.Auth(sasl.NewPlainClient("", s.user, s.password)); err != nil {
			return fmt.Errorf("cannot authenticate to SMTP server %s: %w", s.addr, err)
		}
	}
	if err := c.Mail(from, nil); err != nil {
		return fmt.Errorf("SMTP server %s refused sender: %w", s.addr, err)
	}
	if err := c.Rcpt(to, nil); err != nil {
		return fmt.Errorf("SMTP server %s refused recipient: %w", s.addr, classify(err))
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("SMTP server %s refused data: %w", s.addr, err)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("cannot write mail to SMTP server %s: %w", s.addr, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("SMTP server %s did not accept the mail: %w", s.addr, classify(err))
	}
	_ = c.Quit() // accepted: what happens to QUIT does not matter
	return nil
}

// classify marks 5xx answers as permanent.
func classify(err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 500 && se.Code < 600 {
		return fmt.Errorf("%w: %w", errPermanent, err)
	}
	return err
}

// outbox writes each message as a .eml file into dir (embedded mode).
func outbox(dir string) sendFunc {
	return func(_ context.Context, _, _ string, msg []byte, name string) error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cannot create mail outbox: %w", err)
		}
		final := filepath.Join(dir, name+".eml")
		tmp, err := os.CreateTemp(dir, ".tmp-*.eml")
		if err != nil {
			return fmt.Errorf("cannot write mail to outbox: %w", err)
		}
		_, werr := tmp.Write(bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")))
		if cerr := tmp.Close(); werr == nil {
			werr = cerr
		}
		if werr == nil {
			werr = os.Rename(tmp.Name(), final)
		}
		if werr != nil {
			_ = os.Remove(tmp.Name())
			return fmt.Errorf("cannot write mail to outbox: %w", werr)
		}
		return nil
	}
}
