// Package registry owns applications and webhooks: their records in Redis
// (gh:apps, gh:webhooks, msgpack), the change announcements on a Redis
// channel, and the in-memory copy every process keeps so that matching an
// event to its webhooks never leaves the process. The copy follows changes
// published by any process and reloads in full whenever its subscription
// (re)connects.
package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/backoff"
	"github.com/geckohook/geckohook/engine/contract"
)

// App is an application: it owns webhooks, signs their deliveries with
// Secret in its SignatureScheme, and authenticates on the API with a token
// of which only the hash is stored. A rotation keeps the replaced secret or
// token hash in Previous… until its overlap ends (secrets.go). An App in
// the registry is never modified: a change installs a new one.
type App struct {
	ID             string    `msgpack:"id"`
	Name           string    `msgpack:"name"`
	DeveloperEmail string    `msgpack:"email"`
	Secret         string    `msgpack:"secret"`
	TokenHash      string    `msgpack:"token_sha256"`
	CreatedAt      time.Time `msgpack:"created_at"`
	// Scheme is the signature scheme (SchemeGecko when empty, as in
	// records written before there was a choice).
	Scheme          string    `msgpack:"scheme,omitempty"`
	PreviousSecrets []Retired `msgpack:"previous_secrets,omitempty"` // newest first
	PreviousTokens  []Retired `msgpack:"previous_tokens,omitempty"`  // token hashes

	signer      *contract.Signer
	prevSigners []*contract.Signer // of PreviousSecrets, same order
	gecko       bool               // sends X-Gecko-Signature
	standard    bool               // sends the Standard Webhooks headers
	now         func() time.Time   // the registry's clock, for overlaps
}

// Signer signs bodies with the application's current secret.
func (a *App) Signer() *contract.Signer { return a.signer }

// Webhook subscribes an address to one event of one account.
type Webhook struct {
	ID        string    `msgpack:"id"`
	AppID     string    `msgpack:"app_id"`
	AccountID string    `msgpack:"account_id"`
	Event     string    `msgpack:"event"`
	Address   string    `msgpack:"address"`
	CreatedAt time.Time `msgpack:"created_at"`

	host string
}

// Host is the host:port the webhook's address connects to (default port
// filled in); outbound limits are kept per Host.
func (w *Webhook) Host() string { return w.host }

func (w *Webhook) prepare() {
	u, err := url.Parse(w.Address)
	if err != nil {
		w.host = w.Address
		return
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	w.host = net.JoinHostPort(host, port)
}

// ErrNotFound is returned for an unknown id.
var ErrNotFound = errors.New("not found")

// errReload is apply's answer to an announcement asking for a full reload.
var errReload = errors.New("reload announced")

// change is one announcement on the registry channel.
type change struct {
	Kind   byte   `msgpack:"k"` // 'a' app, 'w' webhook, 'r' reload everything
	Delete bool   `msgpack:"d"`
	ID     string `msgpack:"id"`
	Record []byte `msgpack:"r"`
	// At is when it was announced (Unix nanoseconds, the announcing
	// process's clock; 0 from processes older than the field).
	At int64 `msgpack:"t,omitempty"`
}

// announcement encodes c for the channel, stamped with the time.
func (r *Registry) announcement(c *change) ([]byte, error) {
	c.At = r.opts.Now().UnixNano()
	return msgpack.Marshal(c)
}

// Options configure a Registry.
type Options struct {
	// Prefix of every key (default "gh:").
	Prefix string
	// ReloadEvery reloads the whole registry periodically as a safety net
	// for lost announcements (default 5m; negative disables).
	ReloadEvery time.Duration
	Log         zerolog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// ChangeDelay, when set, is told how long each change announced by
	// any process took from its announcement until this process applied
	// it (by the two processes' clocks).
	ChangeDelay func(time.Duration)
}

// Registry is the in-memory copy of applications and webhooks, backed by
// Redis. All methods are safe for concurrent use.
type Registry struct {
	rdb      redis.UniversalClient
	opts     Options
	appsKey  string
	hooksKey string
	channel  string

	mu sync.RWMutex
	index
	// version counts the changes to the copy: bumped under mu with every
	// change applied and every full load.
	version atomic.Uint64

	reloads  atomic.Int64
	lastLoad atomic.Int64 // nanoseconds
	done     chan struct{}
}

// New returns an empty Registry; Start loads it and follows changes.
func New(rdb redis.UniversalClient, o Options) *Registry {
	if o.Prefix == "" {
		o.Prefix = contract.DefaultRedisPrefix
	}
	if o.ReloadEvery == 0 {
		o.ReloadEvery = 5 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Registry{
		rdb: rdb, opts: o,
		appsKey: o.Prefix + "apps", hooksKey: o.Prefix + "webhooks", channel: o.Prefix + "registry",
		done: make(chan struct{}),
	}
	r.index = newIndex(0, 0)
	return r
}

// Start subscribes to changes, loads the registry, and follows changes until
// ctx ends. It returns once the first load is done; Done is closed when the
// follower (and its goroutines) stopped after ctx ended. Cancelling ctx and
// waiting for Done is the one way to stop it.
func (r *Registry) Start(ctx context.Context) error {
	ps := r.rdb.Subscribe(ctx, r.channel)
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return fmt.Errorf("cannot subscribe to registry changes: %w", err)
	}
	if err := r.Reload(ctx); err != nil {
		_ = ps.Close()
		return err
	}
	go r.follow(ctx, ps)
	return nil
}

// Done is closed when the follower has stopped.
func (r *Registry) Done() <-chan struct{} { return r.done }

// Reloads counts full reloads (for tests and metrics).
func (r *Registry) Reloads() int64 { return r.reloads.Load() }

func (r *Registry) follow(ctx context.Context, ps *redis.PubSub) {
	defer close(r.done)
	// The receiver below is this follower's: closing ps (deferred last, so
	// it runs first) unblocks it, and done closes only once it has ended.
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ps.Close()
	msgs := make(chan any)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(msgs)
		for {
			m, err := ps.Receive(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				r.opts.Log.Warn().Err(err).Msg("registry subscription lost; reconnecting")
				if !backoff.Sleep(ctx, 500*time.Millisecond) {
					return
				}
				continue
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	var tick <-chan time.Time
	if r.opts.ReloadEvery > 0 {
		t := time.NewTicker(r.opts.ReloadEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			r.reloadUntilDone(ctx)
			if err := r.DropExpired(ctx); err != nil {
				r.opts.Log.Warn().Err(err).Msg("cannot drop expired secrets and tokens; next time")
			}
		case m, ok := <-msgs:
			if !ok {
				return
			}
			switch m := m.(type) {
			case *redis.Subscription:
				// A (re)subscription: announcements may have been missed.
				if m.Kind == "subscribe" {
					r.reloadUntilDone(ctx)
				}
			case *redis.Message:
				if err := r.applyPayload([]byte(m.Payload)); errors.Is(err, errReload) {
					r.reloadUntilDone(ctx)
				} else if err != nil {
					r.opts.Log.Error().Err(err).Msg("bad registry announcement; reloading")
					r.reloadUntilDone(ctx)
				}
			}
		}
	}
}

func (r *Registry) reloadUntilDone(ctx context.Context) {
	backoff.Retry(ctx, 100*time.Millisecond, 5*time.Second, func() error { return r.Reload(ctx) },
		func(err error, wait time.Duration) {
			r.opts.Log.Warn().Err(err).Dur("retry_in_ms", wait).Msg("cannot reload registry")
		})
}

func (r *Registry) decodeApp(raw []byte) (*App, error) {
	a := new(App)
	if err := msgpack.Unmarshal(raw, a); err != nil {
		return nil, err
	}
	a.dropExpired(r.opts.Now())
	a.prepare(r.opts.Now)
	return a, nil
}

func (r *Registry) applyPayload(payload []byte) error {
	var c change
	if err := msgpack.Unmarshal(payload, &c); err != nil {
		return fmt.Errorf("cannot decode registry change: %w", err)
	}
	if err := r.apply(c); err != nil {
		return err
	}
	if c.At != 0 && r.opts.ChangeDelay != nil {
		r.opts.ChangeDelay(r.opts.Now().Sub(time.Unix(0, c.At)))
	}
	return nil
}

func (r *Registry) apply(c change) error {
	switch c.Kind {
	case 'a':
		var a *App
		if !c.Delete {
			var err error
			if a, err = r.decodeApp(c.Record); err != nil {
				return fmt.Errorf("cannot decode application %s: %w", c.ID, err)
			}
		}
		r.mu.Lock()
		r.removeApp(c.ID)
		if a != nil {
			r.addApp(a)
		}
		r.version.Add(1)
		r.mu.Unlock()
	case 'w':
		var w *Webhook
		if !c.Delete {
			w = new(Webhook)
			if err := msgpack.Unmarshal(c.Record, w); err != nil {
				return fmt.Errorf("cannot decode webhook %s: %w", c.ID, err)
			}
			w.prepare()
		}
		r.mu.Lock()
		r.removeHook(c.ID)
		if w != nil {
			r.addHook(w)
		}
		r.version.Add(1)
		r.mu.Unlock()
	case 'r':
		return errReload
	default:
		return fmt.Errorf("unknown registry change kind %q", c.Kind)
	}
	return nil
}

// Target is a matched webhook with its application (nil when the
// application is gone).
type Target struct {
	Hook *Webhook
	App  *App
}

// MatchTargets appends to dst the webhooks subscribed to event on account,
// each with its application, and returns the copy's version as it read
// them: while Version still says so, no webhook or application has
// changed, and they are what Target would return.
func (r *Registry) MatchTargets(dst []Target, account, event string) ([]Target, uint64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, w := range match(r.byAccount[account], event) {
		dst = append(dst, Target{Hook: w, App: r.apps[w.AppID]})
	}
	return dst, r.version.Load()
}

// Version is the copy's version: it changes with every change applied
// and every full load (see MatchTargets).
func (r *Registry) Version() uint64 { return r.version.Load() }

// Webhook returns the webhook with id, or nil.
func (r *Registry) Webhook(id string) *Webhook {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.hooks[id]
}

// Target returns a webhook and its application in one lookup; both are
// nil when either is gone.
func (r *Registry) Target(webhookID string) (*Webhook, *App) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	w := r.hooks[webhookID]
	if w == nil {
		return nil, nil
	}
	a := r.apps[w.AppID]
	if a == nil {
		return nil, nil
	}
	return w, a
}

// App returns the application with id, or nil.
func (r *Registry) App(id string) *App {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.apps[id]
}

// AppByToken returns the application whose API token is token, or nil. A
// token replaced by a rotation is accepted until its overlap ends.
func (r *Registry) AppByToken(token string) *App {
	h := HashToken(token)
	r.mu.RLock()
	a := r.byToken[h]
	r.mu.RUnlock()
	if a == nil || a.TokenHash == h || a.previousTokenValid(h, r.opts.Now()) {
		return a
	}
	return nil
}

// Counts returns how many applications and webhooks are loaded.
func (r *Registry) Counts() (apps, webhooks int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.apps), len(r.hooks)
}

// Webhooks lists an application's webhooks, oldest first; accountID, when
// not empty, keeps only that account's.
func (r *Registry) Webhooks(appID, accountID string) []*Webhook {
	if accountID == "" {
		list, unlock := r.appHooks(appID)
		defer unlock()
		return slices.Clone(list)
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.accountsWebhooks(appID, accountID)
}

// appHooks returns an application's webhooks in listing order, sorting
// them first if a full load left them unsorted, with the read lock held
// until unlock is called.
func (r *Registry) appHooks(appID string) (list []*Webhook, unlock func()) {
	for {
		r.mu.RLock()
		app := r.byApp[appID]
		if app == nil || app.sorted {
			if app != nil {
				list = app.list
			}
			return list, r.mu.RUnlock
		}
		r.mu.RUnlock()
		r.mu.Lock()
		// Checked again: a reload may have installed another index.
		if app := r.byApp[appID]; app != nil && !app.sorted {
			slices.SortFunc(app.list, byCreation)
			app.sorted = true
		}
		r.mu.Unlock()
	}
}

// accountsWebhooks is an application's webhooks on one account in listing
// order; the caller holds the lock.
func (r *Registry) accountsWebhooks(appID, accountID string) []*Webhook {
	var out []*Webhook
	for _, w := range r.byAccount[accountID] {
		if w.AppID == appID {
			out = append(out, w)
		}
	}
	slices.SortFunc(out, byCreation)
	return out
}

// WebhooksAfter is one page of Webhooks: at most limit webhooks that come
// after a position in the listing order, and whether more follow. after
// reports whether a webhook comes after the position (false up to some
// point of the order, true from there on); nil starts at the first. Once
// the application was listed after a load, its cost grows with the page,
// not with the application's webhooks.
func (r *Registry) WebhooksAfter(appID, accountID string, after func(*Webhook) bool, limit int) (page []*Webhook, more bool) {
	var list []*Webhook
	if accountID == "" {
		l, unlock := r.appHooks(appID)
		defer unlock()
		list = l
	} else {
		r.mu.RLock()
		defer r.mu.RUnlock()
		list = r.accountsWebhooks(appID, accountID)
	}
	start := 0
	if after != nil {
		start = sort.Search(len(list), func(i int) bool { return after(list[i]) })
	}
	end := min(start+limit, len(list))
	return slices.Clone(list[start:end]), end < len(list)
}

// HashToken returns the stored form of an API token.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

func newID(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// CreateApp stores a new application signing with SchemeGecko and returns
// it with its API token (shown once; only its hash is kept).
func (r *Registry) CreateApp(ctx context.Context, name, email string) (*App, string, error) {
	return r.CreateAppWithScheme(ctx, name, email, SchemeGecko)
}

// CreateAppWithScheme is CreateApp with a signature scheme (ValidScheme).
func (r *Registry) CreateAppWithScheme(ctx context.Context, name, email, scheme string) (*App, string, error) {
	if !ValidScheme(scheme) {
		return nil, "", fmt.Errorf("unknown signature scheme %q", scheme)
	}
	token := newToken()
	a := &App{
		ID: newID("app_"), Name: name, DeveloperEmail: email,
		Secret: newSecret(), TokenHash: HashToken(token),
		CreatedAt: r.opts.Now().UTC().Truncate(time.Second), Scheme: scheme,
	}
	raw, err := msgpack.Marshal(a)
	if err != nil {
		return nil, "", fmt.Errorf("cannot encode application: %w", err)
	}
	if err := r.write(ctx, r.appsKey, change{Kind: 'a', ID: a.ID, Record: raw}); err != nil {
		return nil, "", fmt.Errorf("cannot store application: %w", err)
	}
	// Not r.App(a.ID): a concurrent reload may have swapped the maps.
	a.prepare(r.opts.Now)
	return a, token, nil
}

// CreateWebhook stores a new webhook (ID and CreatedAt are assigned).
func (r *Registry) CreateWebhook(ctx context.Context, w Webhook) (*Webhook, error) {
	w.ID = newID("wh_")
	w.CreatedAt = r.opts.Now().UTC().Truncate(time.Second)
	raw, err := msgpack.Marshal(&w)
	if err != nil {
		return nil, fmt.Errorf("cannot encode webhook: %w", err)
	}
	if err := r.write(ctx, r.hooksKey, change{Kind: 'w', ID: w.ID, Record: raw}); err != nil {
		return nil, fmt.Errorf("cannot store webhook: %w", err)
	}
	w.prepare()
	return &w, nil
}

// Stored reports whether Redis holds the webhook (the in-memory copy may
// lag behind announcements).
func (r *Registry) Stored(ctx context.Context, id string) (bool, error) {
	ok, err := r.rdb.HExists(ctx, r.hooksKey, id).Result()
	if err != nil {
		return false, fmt.Errorf("cannot look up webhook %s: %w", id, err)
	}
	return ok, nil
}

// DeleteWebhook removes a webhook everywhere. It returns ErrNotFound when
// Redis had no such webhook.
func (r *Registry) DeleteWebhook(ctx context.Context, id string) error {
	c := change{Kind: 'w', ID: id, Delete: true}
	payload, err := r.announcement(&c)
	if err != nil {
		return err
	}
	var del *redis.IntCmd
	_, err = r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		del = p.HDel(ctx, r.hooksKey, id)
		p.Publish(ctx, r.channel, payload)
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot delete webhook %s: %w", id, err)
	}
	_ = r.apply(c)
	if del.Val() == 0 {
		return ErrNotFound
	}
	return nil
}

// write stores a record and announces it in one transaction, then applies it
// locally so the caller reads its own write at once.
func (r *Registry) write(ctx context.Context, key string, c change) error {
	payload, err := r.announcement(&c)
	if err != nil {
		return err
	}
	_, err = r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, c.ID, c.Record)
		p.Publish(ctx, r.channel, payload)
		return nil
	})
	if err != nil {
		return err
	}
	return r.apply(c)
}
