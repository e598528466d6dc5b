// Package netguard decides which webhook addresses geckohook may call: it
// validates addresses at registration and refuses, at dial time on the
// resolved IP, every special-purpose address (loopback, private, link-local
// and cloud metadata, multicast, documentation, ...) and every IPv6 form that
// embeds such an IPv4 address, unless private targets are explicitly allowed.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Policy says what outbound targets are allowed.
type Policy struct {
	AllowPrivate bool // every special-purpose target: loopback, private, link-local, ... (development, tests)
	AllowHTTP    bool // plain http:// addresses besides https://
}

// ErrForbiddenTarget is wrapped by every refusal of a target address.
var ErrForbiddenTarget = errors.New("forbidden target address")

type special struct {
	p    netip.Prefix
	name string
}

func sp(prefix, name string) special {
	return special{netip.MustParsePrefix(prefix), name}
}

// blocked4 is the IANA IPv4 special-purpose address registry, every entry
// refused (the few globally reachable ones are anycast, relay and AS112
// service addresses, never webhook receivers), plus multicast and the
// reserved block. The first match names the refusal.
var blocked4 = []special{
	sp("0.0.0.0/8", "this network 0.0.0.0/8"),                            // RFC 791, RFC 1122; includes 0.0.0.0 (unspecified)
	sp("10.0.0.0/8", "private-use 10.0.0.0/8"),                           // RFC 1918
	sp("100.64.0.0/10", "shared address space 100.64.0.0/10"),            // RFC 6598, carrier-grade NAT
	sp("127.0.0.0/8", "loopback 127.0.0.0/8"),                            // RFC 1122
	sp("169.254.0.0/16", "link-local 169.254.0.0/16 (cloud metadata)"),   // RFC 3927, metadata at 169.254.169.254
	sp("172.16.0.0/12", "private-use 172.16.0.0/12"),                     // RFC 1918
	sp("192.0.0.0/24", "IETF protocol assignments 192.0.0.0/24"),         // RFC 6890: DS-Lite, PCP and TURN anycast, NAT64 discovery
	sp("192.0.2.0/24", "documentation 192.0.2.0/24"),                     // RFC 5737, TEST-NET-1
	sp("192.31.196.0/24", "AS112-v4 192.31.196.0/24"),                    // RFC 7535
	sp("192.52.193.0/24", "AMT 192.52.193.0/24"),                         // RFC 7450
	sp("192.88.99.0/24", "deprecated 6to4 relay anycast 192.88.99.0/24"), // RFC 7526, includes 6a44 relay anycast
	sp("192.168.0.0/16", "private-use 192.168.0.0/16"),                   // RFC 1918
	sp("192.175.48.0/24", "AS112 direct delegation 192.175.48.0/24"),     // RFC 7534
	sp("198.18.0.0/15", "benchmarking 198.18.0.0/15"),                    // RFC 2544
	sp("198.51.100.0/24", "documentation 198.51.100.0/24"),               // RFC 5737, TEST-NET-2
	sp("203.0.113.0/24", "documentation 203.0.113.0/24"),                 // RFC 5737, TEST-NET-3
	sp("224.0.0.0/4", "multicast 224.0.0.0/4"),                           // RFC 5771
	sp("255.255.255.255/32", "limited broadcast 255.255.255.255"),        // RFC 919, before 240.0.0.0/4
	sp("240.0.0.0/4", "reserved 240.0.0.0/4"),                            // RFC 1112
}

// An embedding6 is an IPv6 range whose addresses carry an IPv4 address. The
// IPv4 address is judged first; refuse says whether the range is refused
// even when that address is allowed.
type embedding6 struct {
	special
	ipv4   func(a [16]byte) netip.Addr
	refuse bool
}

func last32(a [16]byte) netip.Addr { return netip.AddrFrom4([4]byte(a[12:16])) }

// teredoClient is the Teredo client's IPv4 address: the last 32 bits,
// inverted (RFC 4380 section 4).
func teredoClient(a [16]byte) netip.Addr {
	return netip.AddrFrom4([4]byte{^a[12], ^a[13], ^a[14], ^a[15]})
}

// sixToFour is the 6to4 site's IPv4 address, bits 16-47 (RFC 3056).
func sixToFour(a [16]byte) netip.Addr { return netip.AddrFrom4([4]byte(a[2:6])) }

// blocked6 is the IANA IPv6 special-purpose address registry and the other
// ranges outside global unicast that have names, most specific first; the
// first match decides. Ranges that embed an IPv4 address are refused when
// that address is, and otherwise as marked. Addresses in none of these
// ranges are refused outside global unicast 2000::/3, the only range IANA
// hands out to networks.
var blocked6 = []embedding6{
	{sp("::/128", "unspecified ::"), nil, true},                                       // RFC 4291
	{sp("::1/128", "loopback ::1"), nil, true},                                        // RFC 4291
	{sp("::/96", "IPv4-compatible ::/96 (deprecated)"), last32, true},                 // RFC 4291 section 2.5.5.1
	{sp("::ffff:0:0:0/96", "SIIT IPv4-translated ::ffff:0:0:0/96"), last32, true},     // RFC 2765; IPv4-mapped ::ffff:0:0/96 is unmapped before
	{sp("64:ff9b::/96", "NAT64 well-known prefix 64:ff9b::/96"), last32, false},       // RFC 6052: public IPv4 through a NAT64 gateway
	{sp("64:ff9b:1::/48", "local-use NAT64 64:ff9b:1::/48"), nil, true},               // RFC 8215, IPv4 at a network-chosen place
	{sp("100::/64", "discard-only 100::/64"), nil, true},                              // RFC 6666
	{sp("100:0:0:1::/64", "dummy IPv6 prefix 100:0:0:1::/64"), nil, true},             // IANA registry entry
	{sp("2001::/32", "Teredo 2001::/32"), teredoClient, false},                        // RFC 4380
	{sp("2001:2::/48", "benchmarking 2001:2::/48"), nil, true},                        // RFC 5180
	{sp("2001:10::/28", "deprecated ORCHID 2001:10::/28"), nil, true},                 // RFC 4843
	{sp("2001:20::/28", "ORCHIDv2 2001:20::/28"), nil, true},                          // RFC 7343, identifiers, not locators
	{sp("2001::/23", "IETF protocol assignments 2001::/23"), nil, true},               // RFC 2928: PCP, TURN, DNS-SD anycast, AMT, AS112-v6, DRIP
	{sp("2001:db8::/32", "documentation 2001:db8::/32"), nil, true},                   // RFC 3849
	{sp("2002::/16", "6to4 2002::/16"), sixToFour, false},                             // RFC 3056
	{sp("2620:4f:8000::/48", "AS112 direct delegation 2620:4f:8000::/48"), nil, true}, // RFC 7534
	{sp("3fff::/20", "documentation 3fff::/20"), nil, true},                           // RFC 9637
	{sp("5f00::/16", "SRv6 SIDs 5f00::/16"), nil, true},                               // RFC 9602
	{sp("fc00::/7", "unique-local fc00::/7"), nil, true},                              // RFC 4193
	{sp("fe80::/10", "link-local fe80::/10"), nil, true},                              // RFC 4291
	{sp("fec0::/10", "deprecated site-local fec0::/10"), nil, true},                   // RFC 3879
	{sp("ff00::/8", "multicast ff00::/8"), nil, true},                                 // RFC 4291
}

var globalUnicast = netip.MustParsePrefix("2000::/3")

// Forbidden reports why ip may not be called without AllowPrivate, or "" if
// it may. IPv4-mapped addresses are judged as IPv4, and an IPv6 address
// that embeds an IPv4 address (NAT64, IPv4-compatible, SIIT, 6to4, Teredo,
// ISATAP) by that address too. A zone is ignored.
func Forbidden(ip netip.Addr) string {
	if !ip.IsValid() {
		return "invalid address"
	}
	ip = ip.Unmap().WithZone("") // a prefix never contains a zoned address
	if ip.Is4() {
		for _, s := range blocked4 {
			if s.p.Contains(ip) {
				return s.name
			}
		}
		return ""
	}
	a := ip.As16()
	// ISATAP interface identifiers (RFC 5214) under any prefix:
	// ::0:5efe:a.b.c.d and ::200:5efe:a.b.c.d.
	if (a[8] == 0 || a[8] == 2) && a[9] == 0 && a[10] == 0x5e && a[11] == 0xfe {
		if why := Forbidden(last32(a)); why != "" {
			return fmt.Sprintf("ISATAP address embedding %s, %s", last32(a), why)
		}
	}
	for _, s := range blocked6 {
		if !s.p.Contains(ip) {
			continue
		}
		if s.ipv4 != nil {
			v4 := s.ipv4(a)
			if why := Forbidden(v4); why != "" {
				return fmt.Sprintf("%s embedding %s, %s", s.name, v4, why)
			}
		}
		if s.refuse {
			return s.name
		}
		return ""
	}
	if !globalUnicast.Contains(ip) {
		return "address outside global unicast 2000::/3"
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
		return fmt.Errorf("%w: %s is refused (%s)", ErrForbiddenTarget, ap.Addr(), why)
	}
	return nil
}

// Dialer returns a dialer that enforces the policy.
func (p Policy) Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: p.Control}
}

// CheckAddress validates a webhook address at registration: an absolute
// https (or, if allowed, http) URL with a host, a port in 1-65535 if any, no
// credentials, a host Go and browsers read alike, and not a forbidden
// target. Host names are resolved with lookup (may be nil to skip
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
	case u.Hostname() == "":
		return errors.New("address must have a host such as example.com")
	}
	if err := checkPort(u); err != nil {
		return err
	}
	host := u.Hostname()
	if ip, err := netip.ParseAddr(host); err == nil {
		if p.AllowPrivate {
			return nil
		}
		if ip.Zone() != "" {
			return fmt.Errorf("address host %s has a zone, which names a local interface: webhooks may not target it", host)
		}
		if why := Forbidden(ip); why != "" {
			return fmt.Errorf("address host %s is refused (%s): webhooks may not target it", host, why)
		}
		return nil
	}
	if err := checkName(host); err != nil {
		return err
	}
	if p.AllowPrivate {
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
			return fmt.Errorf("address host %q resolves to %s, which is refused (%s): webhooks may not target it", host, ip, why)
		}
	}
	return nil
}

// checkPort refuses an empty port and one outside 1-65535 (url.Parse
// already refuses one that is not digits).
func checkPort(u *url.URL) error {
	if strings.HasSuffix(u.Host, ":") {
		return errors.New("address has an empty port after the host: give a port in 1-65535 or none")
	}
	port := u.Port()
	if port == "" {
		return nil
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address port %.20s is outside 1-65535", port)
	}
	return nil
}

// checkName refuses a host name that browsers and curl would not look up as
// Go does: non-ASCII names, which they map first (full-width digits become
// an IPv4 address), and names ending in a number, which they read as an
// IPv4 address in a legacy form (2130706433, 0x7f.1, 0177.0.0.1, 127.1) or
// refuse, while Go's resolver sends them to DNS as names.
func checkName(host string) error {
	for i := 0; i < len(host); i++ {
		if host[i] >= 0x80 {
			return fmt.Errorf("address host %q is not ASCII: write an internationalized name in its xn-- (punycode) form", host)
		}
	}
	if !endsInNumber(host) {
		return nil
	}
	if ip, ok := parseLegacyIPv4(host); ok {
		return fmt.Errorf("address host %q is a numeric form of the IPv4 address %s (as browsers and curl read it; Go would look it up as a name): write IPv4 addresses as four decimal numbers", host, ip)
	}
	return fmt.Errorf("address host %q ends in a number but is not an IPv4 address", host)
}

// labels splits host at dots, dropping one trailing empty label (a
// trailing dot), as the WHATWG URL standard does.
func labels(host string) []string {
	l := strings.Split(host, ".")
	if len(l) > 1 && l[len(l)-1] == "" {
		l = l[:len(l)-1]
	}
	return l
}

// endsInNumber is the WHATWG URL standard's "ends in a number" test: the
// last label is decimal digits, or 0x followed by hex digits (or nothing).
func endsInNumber(host string) bool {
	l := labels(host)
	last := strings.ToLower(l[len(l)-1])
	if last == "" {
		return false
	}
	digits, base := last, "0123456789"
	if strings.HasPrefix(last, "0x") {
		digits, base = last[2:], "0123456789abcdef"
	}
	for i := 0; i < len(digits); i++ {
		if !strings.ContainsRune(base, rune(digits[i])) {
			return false
		}
	}
	return true
}

// parseLegacyIPv4 reads host as the WHATWG URL standard's IPv4 parser (and
// inet_aton) do: one to four parts, each decimal, octal with a leading 0,
// or hex with 0x; the last part fills the remaining bytes.
func parseLegacyIPv4(host string) (netip.Addr, bool) {
	parts := labels(host)
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	nums := make([]uint64, len(parts))
	for i, s := range parts {
		s = strings.ToLower(s)
		base := 10
		switch {
		case strings.HasPrefix(s, "0x"):
			s, base = s[2:], 16
			if s == "" {
				s = "0"
			}
		case len(s) > 1 && s[0] == '0':
			s, base = s[1:], 8
		}
		n, err := strconv.ParseUint(s, base, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		if i < len(parts)-1 && n > 255 {
			return netip.Addr{}, false
		}
		nums[i] = n
	}
	last := nums[len(nums)-1]
	if last >= 1<<(8*(5-len(nums))) {
		return netip.Addr{}, false
	}
	v := last
	for i, n := range nums[:len(nums)-1] {
		v |= n << (8 * (3 - i))
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// SystemLookup resolves host with the system resolver.
func SystemLookup(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}
