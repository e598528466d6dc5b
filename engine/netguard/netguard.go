// Package netguard decides which webhook addresses geckohook may call: it
// validates addresses at registration and refuses, at dial time on the
// resolved IP, loopback, private, link-local, multicast, and cloud-metadata
// targets unless private targets are explicitly allowed.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Policy says what outbound targets are allowed.
type Policy struct {
	AllowPrivate bool // loopback, private and link-local targets (development, tests)
	AllowHTTP    bool // plain http:// addresses besides https://
}

// ErrForbiddenTarget is wrapped by every refusal of a target address.
var ErrForbiddenTarget = errors.New("forbidden target address")

var blocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("fec0::/10"),       // deprecated site-local
	netip.MustParsePrefix("100::/64"),        // discard-only
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
}

// Forbidden reports why ip may not be called without AllowPrivate, or "" if
// it may.
func Forbidden(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid():
		return "invalid address"
	case ip.IsLoopback():
		return "loopback address"
	case ip.IsPrivate():
		return "private address"
	case ip.IsLinkLocalUnicast():
		return "link-local address (includes cloud metadata 169.254.169.254)"
	case ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return "multicast address"
	case ip.IsUnspecified():
		return "unspecified address"
	}
	for _, p := range blocked {
		if p.Contains(ip) {
			return "reserved address " + p.String()
		}
	}
	return ""
}

// Control is a net.Dialer Control function enforcing the policy on the
// address actually being connected to, after DNS resolution.
func (p Policy) Control(network, address string, _ syscall.RawConn) error {
	if p.AllowPrivate {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %s: %v", ErrForbiddenTarget, address, err)
	}
	if why := Forbidden(ap.Addr()); why != "" {
		return fmt.Errorf("%w: %s is a %s", ErrForbiddenTarget, ap.Addr(), why)
	}
	return nil
}

// Dialer returns a dialer that enforces the policy.
func (p Policy) Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: p.Control}
}

// CheckAddress validates a webhook address at registration: an absolute
// https (or, if allowed, http) URL with a host, no credentials, and not a
// forbidden target. Host names are resolved with lookup (may be nil to skip
// resolution); a failed lookup is not an error here, because the dialer
// checks again on every connection.
func (p Policy) CheckAddress(ctx context.Context, raw string, lookup func(ctx context.Context, host string) ([]netip.Addr, error)) error {
	if len(raw) > 2048 {
		return errors.New("address is longer than 2048 characters")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("address is not a URL: %v", err)
	}
	switch {
	case !u.IsAbs() || u.Host == "":
		return errors.New("address must be an absolute URL such as https://example.com/hooks")
	case u.Scheme == "http" && !p.AllowHTTP:
		return errors.New("address must use https (plain http is not allowed on this server)")
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("address scheme %q is not http or https", u.Scheme)
	case u.User != nil:
		return errors.New("address must not contain credentials")
	case u.Fragment != "":
		return errors.New("address must not contain a fragment")
	}
	if p.AllowPrivate {
		return nil
	}
	host := u.Hostname()
	if ip, err := netip.ParseAddr(host); err == nil {
		if why := Forbidden(ip); why != "" {
			return fmt.Errorf("address points at a %s, which webhooks may not target", why)
		}
		return nil
	}
	lh := strings.ToLower(strings.TrimSuffix(host, "."))
	if lh == "localhost" || strings.HasSuffix(lh, ".localhost") || lh == "metadata.google.internal" {
		return fmt.Errorf("address host %q is a local name, which webhooks may not target", host)
	}
	if lookup == nil {
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ips, err := lookup(lctx, host)
	if err != nil {
		return nil
	}
	for _, ip := range ips {
		if why := Forbidden(ip); why != "" {
			return fmt.Errorf("address host %q resolves to a %s (%s), which webhooks may not target", host, why, ip)
		}
	}
	return nil
}

// SystemLookup resolves host with the system resolver.
func SystemLookup(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}
