package portal

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// LinkTTL is how long a portal link works if unused.
const LinkTTL = 15 * time.Minute

// Links and sessions live in Redis, so every API process honours them;
// only hashes of their tokens are stored:
//
//	{p}portal:link:{sha256 of token}     STRING app id, expiry (unix ms); TTL LinkTTL; taken with GETDEL
//	{p}portal:session:{sha256 of token}  STRING app id, expiry (unix ms), CSRF token; TTL the session's lifetime
//
// The expiry is checked against the injected clock; the key's TTL is the
// backstop that frees Redis.
func (p *Portal) linkKey(token string) string { return p.o.Prefix + "portal:link:" + tokenHash(token) }
func (p *Portal) sessionKey(token string) string {
	return p.o.Prefix + "portal:session:" + tokenHash(token)
}

func tokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// newToken returns 32 random bytes in base64url.
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// errLinkRefused: the link is unknown, used or expired.
var errLinkRefused = errors.New("portal link unknown, used already or expired")

// Mint stores a new one-time link for the application appID and returns
// its URL and expiry (api.Options.PortalLink).
func (p *Portal) Mint(ctx context.Context, appID string) (string, time.Time, error) {
	token := newToken()
	expires := p.o.Now().Add(LinkTTL)
	val := appID + "\n" + strconv.FormatInt(expires.UnixMilli(), 10)
	if err := p.o.Redis.Set(ctx, p.linkKey(token), val, LinkTTL).Err(); err != nil {
		return "", time.Time{}, fmt.Errorf("cannot store portal link: %w", err)
	}
	return p.o.URL + "/portal/link/" + token, expires, nil
}

// session is an open portal session.
type session struct {
	token   string // the cookie's value
	appID   string
	expires time.Time
	csrf    string
}

// exchange takes the link token (once, in every process) and opens a
// session for its application.
func (p *Portal) exchange(ctx context.Context, linkToken string) (*session, error) {
	if linkToken == "" || len(linkToken) > 100 {
		return nil, errLinkRefused
	}
	val, err := p.o.Redis.GetDel(ctx, p.linkKey(linkToken)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, errLinkRefused
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read portal link: %w", err)
	}
	appID, exp, ok := strings.Cut(val, "\n")
	ms, perr := strconv.ParseInt(exp, 10, 64)
	now := p.o.Now()
	if !ok || perr != nil || !now.Before(time.UnixMilli(ms)) || p.o.Registry.App(appID) == nil {
		return nil, errLinkRefused
	}
	s := &session{token: newToken(), appID: appID, expires: now.Add(p.o.SessionTTL), csrf: newToken()}
	val = s.appID + "\n" + strconv.FormatInt(s.expires.UnixMilli(), 10) + "\n" + s.csrf
	if err := p.o.Redis.Set(ctx, p.sessionKey(s.token), val, p.o.SessionTTL).Err(); err != nil {
		return nil, fmt.Errorf("cannot store portal session: %w", err)
	}
	return s, nil
}

// errNoSession: no cookie, or one of no live session.
var errNoSession = errors.New("no portal session")

// lookup finds the live session of a cookie value.
func (p *Portal) lookup(ctx context.Context, token string) (*session, error) {
	if token == "" || len(token) > 100 {
		return nil, errNoSession
	}
	val, err := p.o.Redis.Get(ctx, p.sessionKey(token)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, errNoSession
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read portal session: %w", err)
	}
	parts := strings.Split(val, "\n")
	if len(parts) != 3 {
		return nil, errNoSession
	}
	ms, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || !p.o.Now().Before(time.UnixMilli(ms)) {
		return nil, errNoSession
	}
	return &session{token: token, appID: parts[0], expires: time.UnixMilli(ms), csrf: parts[2]}, nil
}

// end closes a session in every process.
func (p *Portal) end(ctx context.Context, s *session) error {
	if err := p.o.Redis.Del(ctx, p.sessionKey(s.token)).Err(); err != nil {
		return fmt.Errorf("cannot end portal session: %w", err)
	}
	return nil
}
