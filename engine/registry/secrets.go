package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/geckohook/geckohook/engine/contract"
)

// Signature schemes of an application.
const (
	// SchemeGecko sends X-Gecko-Signature only (the default).
	SchemeGecko = "gecko"
	// SchemeStandard sends the Standard Webhooks headers only: webhook-id,
	// webhook-timestamp and webhook-signature.
	SchemeStandard = "standard"
	// SchemeBoth sends X-Gecko-Signature and the Standard Webhooks headers.
	SchemeBoth = "both"
)

// ValidScheme reports whether s names a signature scheme.
func ValidScheme(s string) bool {
	return s == SchemeGecko || s == SchemeStandard || s == SchemeBoth
}

// Retired is a secret, or a token's hash, replaced by a rotation and still
// accepted until Until.
type Retired struct {
	Value string    `msgpack:"v"`
	Until time.Time `msgpack:"until"`
}

func newSecret() string { return randomString(32) }
func newToken() string  { return "ghk_" + randomString(32) }

// prepare sets what an App derives from its record.
func (a *App) prepare(now func() time.Time) {
	a.now = now
	a.signer = contract.NewSigner(a.Secret)
	a.prevSigners = make([]*contract.Signer, len(a.PreviousSecrets))
	for i, p := range a.PreviousSecrets {
		a.prevSigners[i] = contract.NewSigner(p.Value)
	}
	s := a.SignatureScheme()
	a.gecko = s == SchemeGecko || s == SchemeBoth
	a.standard = s == SchemeStandard || s == SchemeBoth
}

// dropExpired forgets the secrets and tokens whose overlap ended by now.
func (a *App) dropExpired(now time.Time) (dropped bool) {
	keep := func(list []Retired) []Retired {
		var out []Retired
		for _, p := range list {
			if now.Before(p.Until) {
				out = append(out, p)
			} else {
				dropped = true
			}
		}
		return out
	}
	a.PreviousSecrets = keep(a.PreviousSecrets)
	a.PreviousTokens = keep(a.PreviousTokens)
	return dropped
}

// hasExpired reports whether a secret or token of a ended its overlap.
func (a *App) hasExpired(now time.Time) bool {
	for _, list := range [][]Retired{a.PreviousSecrets, a.PreviousTokens} {
		for _, p := range list {
			if !now.Before(p.Until) {
				return true
			}
		}
	}
	return false
}

func (a *App) previousTokenValid(hash string, now time.Time) bool {
	for _, p := range a.PreviousTokens {
		if p.Value == hash && now.Before(p.Until) {
			return true
		}
	}
	return false
}

// SignatureScheme is the application's signature scheme.
func (a *App) SignatureScheme() string {
	if a.Scheme == "" {
		return SchemeGecko
	}
	return a.Scheme
}

// SignsGecko reports whether deliveries carry X-Gecko-Signature.
func (a *App) SignsGecko() bool { return a.gecko }

// SignsStandard reports whether deliveries carry the Standard Webhooks
// headers.
func (a *App) SignsStandard() bool { return a.standard }

// StandardSecret is the current secret in the whsec_ form Standard Webhooks
// libraries take.
func (a *App) StandardSecret() string { return contract.StandardSecret(a.Secret) }

// SecretOverlapEnd is when the last secret replaced by a rotation stops
// signing; zero when none is valid now.
func (a *App) SecretOverlapEnd() time.Time { return overlapEnd(a.PreviousSecrets, a.now()) }

// TokenOverlapEnd is when the last token replaced by a rotation stops being
// accepted; zero when none is valid now.
func (a *App) TokenOverlapEnd() time.Time { return overlapEnd(a.PreviousTokens, a.now()) }

func overlapEnd(list []Retired, now time.Time) time.Time {
	var end time.Time
	for _, p := range list {
		if now.Before(p.Until) && p.Until.After(end) {
			end = p.Until
		}
	}
	return end
}

// AppendStandardSignature appends the webhook-signature value of a message
// to dst: one v1 entry per secret valid now, the current secret first,
// space-separated. The registry's clock is read only while a replaced
// secret is kept, so an application that never rotated reads none.
func (a *App) AppendStandardSignature(dst, id []byte, timestamp int64, body []byte) []byte {
	dst = a.signer.AppendStandardSignature(dst, id, timestamp, body)
	if len(a.prevSigners) == 0 {
		return dst
	}
	now := a.now()
	for i, p := range a.PreviousSecrets {
		if now.Before(p.Until) {
			dst = append(dst, ' ')
			dst = a.prevSigners[i].AppendStandardSignature(dst, id, timestamp, body)
		}
	}
	return dst
}

// SetScheme changes an application's signature scheme.
func (r *Registry) SetScheme(ctx context.Context, id, scheme string) (*App, error) {
	if !ValidScheme(scheme) {
		return nil, fmt.Errorf("unknown signature scheme %q", scheme)
	}
	return r.updateApp(ctx, id, func(a *App, _ time.Time) { a.Scheme = scheme })
}

// RotateSecret gives an application a new secret. The replaced one keeps
// signing (in webhook-signature, after the new one) for overlap; 0 retires
// it at once. X-Gecko-Signature uses the new secret from now on.
func (r *Registry) RotateSecret(ctx context.Context, id string, overlap time.Duration) (*App, error) {
	return r.updateApp(ctx, id, func(a *App, now time.Time) {
		if overlap > 0 {
			a.PreviousSecrets = append([]Retired{{Value: a.Secret, Until: now.Add(overlap).UTC()}}, a.PreviousSecrets...)
		}
		a.Secret = newSecret()
	})
}

// RotateToken gives an application a new API token, returned once. The
// replaced one is accepted for overlap; 0 refuses it at once.
func (r *Registry) RotateToken(ctx context.Context, id string, overlap time.Duration) (*App, string, error) {
	token := newToken()
	a, err := r.updateApp(ctx, id, func(a *App, now time.Time) {
		if overlap > 0 {
			a.PreviousTokens = append([]Retired{{Value: a.TokenHash, Until: now.Add(overlap).UTC()}}, a.PreviousTokens...)
		}
		a.TokenHash = HashToken(token)
	})
	if err != nil {
		return nil, "", err
	}
	return a, token, nil
}

// DropExpired rewrites the record of every application holding a secret or
// token whose overlap has ended, so the store no longer holds it (every
// process has stopped using it already: overlaps are checked by time). The
// registry's follower calls it on each periodic reload.
func (r *Registry) DropExpired(ctx context.Context) error {
	now := r.opts.Now()
	var ids []string
	r.mu.RLock()
	for id, a := range r.apps {
		if a.hasExpired(now) {
			ids = append(ids, id)
		}
	}
	r.mu.RUnlock()
	var errs []error
	for _, id := range ids {
		if _, err := r.updateApp(ctx, id, func(*App, time.Time) {}); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// updateApp changes the stored application id with edit and announces it:
// read, edit and write under WATCH, so concurrent changes (from any process)
// are never lost. Expired secrets and tokens are dropped on the way.
func (r *Registry) updateApp(ctx context.Context, id string, edit func(a *App, now time.Time)) (*App, error) {
	var c change
	var out *App
	write := func(tx *redis.Tx) error {
		raw, err := tx.HGet(ctx, r.appsKey, id).Bytes()
		if errors.Is(err, redis.Nil) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		a := new(App)
		if err := msgpack.Unmarshal(raw, a); err != nil {
			return fmt.Errorf("cannot decode application %s: %w", id, err)
		}
		now := r.opts.Now()
		a.dropExpired(now)
		edit(a, now)
		rec, err := msgpack.Marshal(a)
		if err != nil {
			return fmt.Errorf("cannot encode application: %w", err)
		}
		c = change{Kind: 'a', ID: id, Record: rec}
		payload, err := r.announcement(&c)
		if err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, r.appsKey, id, rec)
			p.Publish(ctx, r.channel, payload)
			return nil
		})
		if err == nil {
			a.prepare(r.opts.Now)
			out = a
		}
		return err
	}
	var err error
	for range 10 {
		if err = r.rdb.Watch(ctx, write, r.appsKey); !errors.Is(err, redis.TxFailedErr) {
			break
		}
	}
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("cannot update application %s: %w", id, err)
	}
	// The caller reads its own write at once.
	if err := r.apply(c); err != nil {
		return nil, err
	}
	return out, nil
}
