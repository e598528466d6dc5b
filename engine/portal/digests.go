package portal

import (
	"context"
	"slices"

	"github.com/valyala/fasthttp"

	"github.com/geckohook/geckohook/engine/daylog"
	"github.com/geckohook/geckohook/engine/mail"
)

// digestView is one day's digest as mailed.
type digestView struct {
	Day     string
	Today   bool
	Empty   bool // nothing to report: no mail that day
	Subject string
	Text    string
}

// withApp fills in the digest's application as the mail job does.
func (r *request) withApp(d *mail.Digest) {
	d.App = mail.App{ID: r.app.ID, Name: r.app.Name, Email: r.app.DeveloperEmail}
}

// digestsPage: GET /portal/digests: the digests of the days kept, as
// mailed (subject and plain-text part; the HTML part one click away).
func (r *request) digestsPage() {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	digests, err := r.p.digests(ctx, r.app.ID)
	if err != nil {
		r.p.o.Log.Error().Err(err).Msg("portal cannot read day records")
		r.message(fasthttp.StatusServiceUnavailable, "Digests", "The day records cannot be read right now; try again.")
		return
	}
	views := make([]digestView, 0, len(digests))
	for i, d := range digests {
		v := digestView{Day: d.Day, Today: i == 0, Empty: d.Empty()}
		if !v.Empty {
			r.withApp(d)
			subject, text, _, err := r.p.o.MailTemplates.Parts(d)
			if err != nil {
				r.p.o.Log.Error().Err(err).Msg("cannot render a digest")
				continue
			}
			v.Subject, v.Text = subject, string(text)
		}
		views = append(views, v)
	}
	r.p.render(r.ctx, fasthttp.StatusOK, "digests", r.page("Digests", views))
}

// digestHTML: GET /portal/digests/{day}: the HTML part of that day's
// digest, as mailed, under the portal's CSP.
func (r *request) digestHTML(day string) {
	if !slices.Contains(r.p.keptDays(), day) {
		r.message(fasthttp.StatusNotFound, "Not found", "No digest of that day.")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	d, err := r.p.digest(ctx, r.app.ID, day)
	if err != nil {
		r.p.o.Log.Error().Err(err).Msg("portal cannot read day records")
		r.message(fasthttp.StatusServiceUnavailable, "Digests", "The day records cannot be read right now; try again.")
		return
	}
	if d.Empty() {
		r.message(fasthttp.StatusNotFound, "Not found", "No digest of that day.")
		return
	}
	r.withApp(d)
	_, _, html, err := r.p.o.MailTemplates.Parts(d)
	if err != nil {
		r.p.o.Log.Error().Err(err).Msg("cannot render a digest")
		r.message(fasthttp.StatusInternalServerError, "Digests", "This digest cannot be shown.")
		return
	}
	r.ctx.SetContentType("text/html; charset=utf-8")
	r.ctx.SetBody(html)
}

// digest reads the application's digest of the mail day day.
func (p *Portal) digest(ctx context.Context, appID, day string) (*mail.Digest, error) {
	start, err := p.o.Policy.DayStart(day)
	if err != nil {
		return nil, err
	}
	return mail.ReadDigest(ctx, p.o.Redis, daylog.Keys{Prefix: p.o.Prefix}, p.o.Policy, day, appID, start, p.o.Log)
}

// digests reads the application's digests of the days kept, today first
// (today's is the part of the day so far, mailed when it ends).
func (p *Portal) digests(ctx context.Context, appID string) ([]*mail.Digest, error) {
	return mail.ReadDigests(ctx, p.o.Redis, daylog.Keys{Prefix: p.o.Prefix}, p.o.Policy, appID, p.keptDays(), p.o.Log)
}
