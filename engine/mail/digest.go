package mail

import (
	"bytes"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	texttemplate "text/template"
	"time"

	"github.com/geckohook/geckohook/engine/daylog"
)

//go:embed templates/*.tmpl
var defaultTemplates embed.FS

// Template files; a --mail-templates directory may hold any of them, the
// others keep the built-in version.
const (
	SubjectFile = "subject.tmpl"     // text/template, one line
	TextFile    = "digest.txt.tmpl"  // text/template, the plain-text part
	HTMLFile    = "digest.html.tmpl" // html/template, the HTML part
)

// App is the application a digest goes to.
type App struct {
	ID, Name, Email string
}

// Digest is what the templates see.
type Digest struct {
	Day        string // the mail day, YYYY-MM-DD
	Start, End time.Time
	App        App
	Failing    []*daylog.Entry // failed that day and not deleted, by address
	Deleted    []*daylog.Entry // deleted that day, by time
	// FailingMore and DeletedMore count those left out past MaxListed.
	FailingMore, DeletedMore int
	DeleteAfter              time.Duration
}

// Empty reports whether the digest has nothing to report: no mail is sent
// for it.
func (d *Digest) Empty() bool { return len(d.Failing) == 0 && len(d.Deleted) == 0 }

// Templates renders digests.
type Templates struct {
	subject *texttemplate.Template
	text    *texttemplate.Template
	html    *htmltemplate.Template
}

var funcs = map[string]any{
	"add": func(a, b int) int { return a + b },
	"dur": Dur,
	"fmtTime": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
}

// Dur shows a whole number of days or hours as such (72h: "3 days"),
// as the digests' templates do.
func Dur(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		if d == 24*time.Hour {
			return "1 day"
		}
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%d hours", d/time.Hour)
	}
	return d.String()
}

// LoadTemplates parses the built-in templates, replaced by those found in
// dir when dir is not empty.
func LoadTemplates(dir string) (*Templates, error) {
	read := func(name string) (string, error) {
		if dir != "" {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err == nil {
				return string(b), nil
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("cannot read mail template: %w", err)
			}
		}
		b, err := defaultTemplates.ReadFile("templates/" + name)
		return string(b), err
	}
	var t Templates
	src, err := read(SubjectFile)
	if err != nil {
		return nil, err
	}
	if t.subject, err = texttemplate.New(SubjectFile).Funcs(funcs).Parse(src); err != nil {
		return nil, fmt.Errorf("cannot parse mail template %s: %w", SubjectFile, err)
	}
	if src, err = read(TextFile); err != nil {
		return nil, err
	}
	if t.text, err = texttemplate.New(TextFile).Funcs(funcs).Parse(src); err != nil {
		return nil, fmt.Errorf("cannot parse mail template %s: %w", TextFile, err)
	}
	if src, err = read(HTMLFile); err != nil {
		return nil, err
	}
	if t.html, err = htmltemplate.New(HTMLFile).Funcs(funcs).Parse(src); err != nil {
		return nil, fmt.Errorf("cannot parse mail template %s: %w", HTMLFile, err)
	}
	return &t, nil
}

// Render builds the whole message (headers, multipart/alternative body with
// a plain-text and an HTML part, CRLF line ends). The Message-ID is derived
// from the day and the application, so a copy sent again after a crash
// carries the same one.
func (t *Templates) Render(d *Digest, from string, now time.Time) ([]byte, error) {
	subject, text, html, err := t.Parts(d)
	if err != nil {
		return nil, err
	}

	var b bytes.Buffer
	domain := "geckohook.invalid"
	if _, dom, ok := strings.Cut(from, "@"); ok && dom != "" {
		domain = strings.Trim(dom, "<> ")
	}
	boundary := make([]byte, 12)
	_, _ = rand.Read(boundary)
	mw := multipart.NewWriter(&b)
	if err := mw.SetBoundary("gh-" + hex.EncodeToString(boundary)); err != nil {
		return nil, err
	}
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	h("From", from)
	h("To", d.App.Email)
	h("Subject", mime.QEncoding.Encode("utf-8", subject))
	h("Date", now.UTC().Format(time.RFC1123Z))
	h("Message-ID", "<digest-"+d.Day+"-"+d.App.ID+"@"+domain+">")
	h("MIME-Version", "1.0")
	h("Content-Type", "multipart/alternative; boundary=\""+mw.Boundary()+"\"")
	h("Auto-Submitted", "auto-generated")
	b.WriteString("\r\n")
	for _, part := range []struct {
		ctype string
		body  []byte
	}{{"text/plain; charset=utf-8", text}, {"text/html; charset=utf-8", html}} {
		pw, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {part.ctype},
			"Content-Transfer-Encoding": {"quoted-printable"},
		})
		if err != nil {
			return nil, fmt.Errorf("cannot build mail part: %w", err)
		}
		qw := quotedprintable.NewWriter(pw)
		if _, err := qw.Write(part.body); err != nil {
			return nil, fmt.Errorf("cannot encode mail part: %w", err)
		}
		if err := qw.Close(); err != nil {
			return nil, fmt.Errorf("cannot encode mail part: %w", err)
		}
	}
	if err := mw.Close(); err != nil {
		return nil, fmt.Errorf("cannot finish mail: %w", err)
	}
	return b.Bytes(), nil
}

// Parts renders a digest's subject (one line), plain-text part and HTML
// part, as Render puts them in the mail.
func (t *Templates) Parts(d *Digest) (subject string, text, html []byte, err error) {
	var subj, txt, htm bytes.Buffer
	if err := t.subject.Execute(&subj, d); err != nil {
		return "", nil, nil, fmt.Errorf("cannot render mail subject: %w", err)
	}
	if err := t.text.Execute(&txt, d); err != nil {
		return "", nil, nil, fmt.Errorf("cannot render plain-text mail: %w", err)
	}
	if err := t.html.Execute(&htm, d); err != nil {
		return "", nil, nil, fmt.Errorf("cannot render HTML mail: %w", err)
	}
	return strings.Join(strings.Fields(subj.String()), " "), txt.Bytes(), htm.Bytes(), nil
}
