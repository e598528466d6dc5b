package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/geckohook/geckohook/engine/coordinator"
	"github.com/geckohook/geckohook/engine/mail"
	"github.com/geckohook/geckohook/engine/outcomes"
	"github.com/geckohook/geckohook/engine/publish"
	"github.com/geckohook/geckohook/engine/streak"
)

// coordinatorConfig holds the settings of the coordinator role, the daily
// mail, and the outcomes dispatchers publish for them.
type coordinatorConfig struct {
	OutcomesTopic    string
	CoordinatorGroup string
	DeleteAfter      time.Duration
	SweepEvery       time.Duration
	MailAt           string
	MailGrace        time.Duration
	MailOutbox       string
	MailTemplates    string
	MailFrom         string
	SMTPAddr         string
	SMTPUser         string
	SMTPPassword     string

	mailAt time.Duration // MailAt parsed
}

func addCoordinatorFlags(fs *flag.FlagSet, c *coordinatorConfig) {
	fs.StringVar(&c.OutcomesTopic, "outcomes-topic", outcomes.DefaultTopic, "Kafka topic where dispatchers publish delivery outcomes for the coordinator (key = webhook id)")
	fs.StringVar(&c.CoordinatorGroup, "coordinator-group", "geckohook-coordinators", "Kafka consumer group of the coordinators")
	fs.DurationVar(&c.DeleteAfter, "delete-after", streak.DefaultDeleteAfter, "delete a webhook whose failures have run this long without a single success (the 3-day rule)")
	fs.DurationVar(&c.SweepEvery, "sweep-every", time.Minute, "how often the coordinator sweeps failing webhooks for --delete-after")
	fs.StringVar(&c.MailAt, "mail-at", "00:00", "time of day (HH:MM, UTC) of the daily digest, which covers the 24 h before it")
	fs.DurationVar(&c.MailGrace, "mail-grace", 2*time.Minute, "the time an outcome may take into Kafka: a day's digest waits until the coordinators have applied every outcome up to this long past the day's end, and the 3-day rule is judged this long behind the coordinators' catch-up watermark (and behind a crossing failure's own time)")
	fs.StringVar(&c.MailOutbox, "mail-outbox", "./outbox", "`path` of the directory where digests are written as .eml files when there is no --smtp-addr")
	fs.StringVar(&c.MailTemplates, "mail-templates", "", "`path` of a directory with digest templates replacing the built-in ones: subject.tmpl, digest.txt.tmpl (text/template), digest.html.tmpl (html/template); missing files keep the built-in version")
	fs.StringVar(&c.MailFrom, "mail-from", "geckohook@localhost", "sender address of the daily digests")
	fs.StringVar(&c.SMTPAddr, "smtp-addr", "", "SMTP server `addr` (host:port) for the daily digests (STARTTLS when offered); empty: write them into --mail-outbox")
	fs.StringVar(&c.SMTPUser, "smtp-user", "", "SMTP user (PLAIN auth, only over TLS or to loopback)")
	fs.StringVar(&c.SMTPPassword, "smtp-password", "", "SMTP password (prefer GECKOHOOK_SMTP_PASSWORD)")
}

func (c *coordinatorConfig) validate() error {
	t, err := time.Parse("15:04", c.MailAt)
	if err != nil {
		return fmt.Errorf("bad --mail-at %q: want HH:MM (UTC)", c.MailAt)
	}
	c.mailAt = time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute
	if c.DeleteAfter <= 0 || c.SweepEvery <= 0 || c.MailGrace <= 0 {
		return fmt.Errorf("--delete-after, --sweep-every and --mail-grace must be positive")
	}
	return nil
}

func (c *coordinatorConfig) policy() streak.Policy {
	return streak.Policy{DeleteAfter: c.DeleteAfter, MailAt: c.mailAt}
}

// newOutcomes builds the publisher dispatchers report outcomes through;
// the part "outcomes publisher" starts and closes it.
func newOutcomes(c *config, brokers []string, rdb redis.UniversalClient, set *metrics.Set, log zerolog.Logger) *publish.Publisher {
	return publish.NewUnstarted(brokers, c.OutcomesTopic, log.With().Str("part", "outcomes").Logger(),
		publish.WithFailingSet(rdb, coordinator.Keys{Prefix: c.RedisPrefix}.Failing(), 30*time.Second),
		publish.WithMetrics(set))
}

// newCoordinator builds the coordinator and the daily mail job, the parts
// "coordinator" and "daily mail".
func (p *process) newCoordinator(context.Context) (err error) {
	c := p.c
	p.coordinator = coordinator.New(coordinator.Options{
		Brokers: p.brokers, Topic: c.OutcomesTopic, Group: c.CoordinatorGroup,
		Redis: p.rdb, Prefix: c.RedisPrefix, Registry: p.registry, Policy: c.policy(),
		SweepEvery: c.SweepEvery, SessionTimeout: c.KafkaSession, Grace: c.MailGrace,
		Metrics: p.metrics, Log: p.log.With().Str("part", "coordinator").Logger(),
	})
	p.mail, err = mail.New(mail.Options{
		Redis: p.rdb, Prefix: c.RedisPrefix, Registry: p.registry, Policy: c.policy(),
		From: c.MailFrom, SMTPAddr: c.SMTPAddr, SMTPUser: c.SMTPUser, SMTPPassword: c.SMTPPassword,
		Outbox: c.MailOutbox, Templates: c.MailTemplates, Grace: c.MailGrace,
		Metrics: p.metrics, Log: p.log.With().Str("part", "mail").Logger(),
	})
	return err
}

// announceCoordinator says where the digests go once the daily mail starts.
func (p *process) announceCoordinator(context.Context) error {
	c := p.c
	where := "SMTP " + c.SMTPAddr
	if c.SMTPAddr == "" {
		where = "outbox " + c.MailOutbox
		fmt.Fprintf(p.stdout, "daily digests are written into %s (no --smtp-addr)\n", c.MailOutbox)
	}
	p.log.Info().Str("topic", c.OutcomesTopic).Str("group", c.CoordinatorGroup).Str("delete_after", c.DeleteAfter.String()).
		Str("mail_at", c.MailAt).Str("mail_to", where).Msg("coordinator running")
	return nil
}
