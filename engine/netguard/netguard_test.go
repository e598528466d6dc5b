package netguard

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testLookup stands in for DNS: names map to addresses here, nothing leaves
// the machine.
func testLookup(_ context.Context, host string) ([]netip.Addr, error) {
	switch host {
	case "public.test":
		return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
	case "internal.test":
		return []netip.Addr{netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("10.0.0.5")}, nil
	case "nat64.test":
		return []netip.Addr{netip.MustParseAddr("64:ff9b::7f00:1")}, nil
	case "sixtofour.test":
		return []netip.Addr{netip.MustParseAddr("2002:a9fe:a9fe::1")}, nil
	}
	return nil, errors.New("no such host")
}

// TestAddressForms is the one table of every address form tried. Each row is
// checked at registration (CheckAddress) and, where the host is an IP
// literal or a name the test lookup maps to one address, at dial time
// (Control, on that address as the dialer would see it after resolution).
//
// reg and dial are "" when the form is allowed, otherwise a fragment of the
// error; dial is "-" where no dial-time check applies (the registration
// refuses the form before any address exists, or the name has several).
func TestAddressForms(t *testing.T) {
	const noDial = "-"
	open := Policy{AllowPrivate: true, AllowHTTP: true}
	for _, tc := range []struct {
		open      bool // Policy{AllowPrivate, AllowHTTP}; otherwise Policy{}
		addr      string
		reg, dial string
	}{
		// URL shape
		{false, "https://public.test/hooks", "", ""},
		{false, "https://unresolvable.test/hooks", "", noDial},
		{false, "http://public.test/hooks", "https", noDial},
		{false, "ftp://public.test/", "scheme", noDial},
		{false, "/relative", "absolute", noDial},
		{false, "public.test/hooks", "absolute", noDial},
		{false, "https://user:pw@public.test/", "credentials", noDial},
		{false, "https://public.test/#frag", "fragment", noDial},
		{false, "https://public.test/" + strings.Repeat("a", 3000), "longer", noDial},
		{false, "https://:443/", "host", noDial},
		// ports
		{false, "https://public.test:1/", "", ""},
		{false, "https://public.test:65535/", "", ""},
		{false, "https://public.test:99999/", "port 99999 is outside 1-65535", noDial},
		{false, "https://public.test:65536/", "port 65536 is outside 1-65535", noDial},
		{false, "https://public.test:0/", "port 0 is outside 1-65535", noDial},
		{false, "https://public.test:00/", "port 00 is outside 1-65535", noDial},
		{false, "https://public.test:99999999999999999999/", "outside 1-65535", noDial},
		{false, "https://public.test:/", "empty port", noDial},
		{false, "https://[2606:4700::1111]:0/", "port 0 is outside 1-65535", noDial},
		{false, "https://public.test:abc/", "invalid port", noDial},
		{true, "http://127.0.0.1:99999/", "port 99999 is outside 1-65535", noDial},
		// IPv4 special-purpose registry, multicast, broadcast
		{false, "https://8.8.8.8/", "", ""},
		{false, "https://1.1.1.1/", "", ""},
		{false, "https://0.0.0.0/", "this network", "this network"},
		{false, "https://0.1.2.3/", "this network", "this network"},
		{false, "https://10.1.2.3/", "private-use", "private-use"},
		{false, "https://100.64.0.1/", "shared address space", "shared address space"},
		{false, "https://127.0.0.1:8080/", "loopback", "loopback"},
		{false, "https://127.8.9.10/", "loopback", "loopback"},
		{false, "https://169.254.169.254/latest/meta-data", "link-local", "link-local"},
		{false, "https://172.16.0.1/", "private-use", "private-use"},
		{false, "https://172.31.255.255/", "private-use", "private-use"},
		{false, "https://172.32.0.1/", "", ""},
		{false, "https://192.0.0.9/", "IETF protocol assignments", "IETF protocol assignments"},
		{false, "https://192.0.0.170/", "IETF protocol assignments", "IETF protocol assignments"},
		{false, "https://192.0.2.1/", "documentation", "documentation"},
		{false, "https://192.31.196.1/", "AS112", "AS112"},
		{false, "https://192.52.193.1/", "AMT", "AMT"},
		{false, "https://192.88.99.1/", "6to4 relay anycast", "6to4 relay anycast"},
		{false, "https://192.168.1.1/", "private-use", "private-use"},
		{false, "https://192.175.48.1/", "AS112", "AS112"},
		{false, "https://198.18.0.1/", "benchmarking", "benchmarking"},
		{false, "https://198.19.255.255/", "benchmarking", "benchmarking"},
		{false, "https://198.51.100.7/", "documentation", "documentation"},
		{false, "https://203.0.113.9/", "documentation", "documentation"},
		{false, "https://224.0.0.1/", "multicast", "multicast"},
		{false, "https://239.255.255.250/", "multicast", "multicast"},
		{false, "https://240.0.0.1/", "reserved", "reserved"},
		{false, "https://255.255.255.255/", "broadcast", "broadcast"},
		// IPv6 special-purpose registry and the rest of the address space
		{false, "https://[2606:4700::1111]/", "", ""},
		{false, "https://[2001:4860:4860::8888]/", "", ""},
		{false, "https://[::]/", "unspecified", "unspecified"},
		{false, "https://[::1]/", "loopback", "loopback"},
		{false, "https://[::ffff:127.0.0.1]/", "loopback", "loopback"},
		{false, "https://[::ffff:10.0.0.1]/", "private-use", "private-use"},
		{false, "https://[::ffff:8.8.8.8]/", "", ""},
		{false, "https://[100::1]/", "discard-only", "discard-only"},
		{false, "https://[100:0:0:1::1]/", "dummy", "dummy"},
		{false, "https://[2001:1::1]/", "IETF protocol assignments", "IETF protocol assignments"},
		{false, "https://[2001:2::1]/", "benchmarking", "benchmarking"},
		{false, "https://[2001:3::1]/", "IETF protocol assignments", "IETF protocol assignments"},
		{false, "https://[2001:10::1]/", "ORCHID", "ORCHID"},
		{false, "https://[2001:20::1]/", "ORCHIDv2", "ORCHIDv2"},
		{false, "https://[2001:30::1]/", "IETF protocol assignments", "IETF protocol assignments"},
		{false, "https://[2001:1ff::1]/", "IETF protocol assignments", "IETF protocol assignments"},
		{false, "https://[2001:200::1]/", "", ""},
		{false, "https://[2001:db8::1]/", "documentation", "documentation"},
		{false, "https://[2620:4f:8000::1]/", "AS112", "AS112"},
		{false, "https://[3fff::1]/", "documentation", "documentation"},
		{false, "https://[5f00::1]/", "SRv6", "SRv6"},
		{false, "https://[fc00::1]/", "unique-local", "unique-local"},
		{false, "https://[fd00:ec2::254]/", "unique-local", "unique-local"},
		{false, "https://[fe80::1]/", "link-local", "link-local"},
		{false, "https://[fe80::1%25eth0]/", "zone", "link-local"},
		{false, "https://[2001:db8::1%25eth0]/", "zone", "documentation"},
		{false, "https://[fec0::1]/", "site-local", "site-local"},
		{false, "https://[ff02::1]/", "multicast", "multicast"},
		{false, "https://[ff0e::1]/", "multicast", "multicast"},
		{false, "https://[4000::1]/", "outside global unicast", "outside global unicast"},
		{false, "https://[1::1]/", "outside global unicast", "outside global unicast"},
		// IPv6 forms that embed an IPv4 address
		{false, "https://[64:ff9b::7f00:1]/", "NAT64 well-known prefix 64:ff9b::/96 embedding 127.0.0.1", "embedding 127.0.0.1"},
		{false, "https://[64:ff9b::a9fe:a9fe]/", "embedding 169.254.169.254", "embedding 169.254.169.254"},
		{false, "https://[64:ff9b::a00:1]/", "embedding 10.0.0.1", "embedding 10.0.0.1"},
		{false, "https://[64:ff9b::c0a8:101]/", "embedding 192.168.1.1", "embedding 192.168.1.1"},
		{false, "https://[64:ff9b::808:808]/", "", ""},
		{false, "https://[64:ff9b:1::a00:1]/", "local-use NAT64", "local-use NAT64"},
		{false, "https://[64:ff9b:1::808:808]/", "local-use NAT64", "local-use NAT64"},
		{false, "https://[::7f00:1]/", "IPv4-compatible", "embedding 127.0.0.1"},
		{false, "https://[::a9fe:a9fe]/", "embedding 169.254.169.254", "embedding 169.254.169.254"},
		{false, "https://[::808:808]/", "IPv4-compatible", "IPv4-compatible"},
		{false, "https://[::ffff:0:7f00:1]/", "IPv4-translated", "embedding 127.0.0.1"},
		{false, "https://[::ffff:0:a00:1]/", "embedding 10.0.0.1", "embedding 10.0.0.1"},
		{false, "https://[::ffff:0:808:808]/", "IPv4-translated", "IPv4-translated"},
		{false, "https://[2002:7f00:1::]/", "6to4 2002::/16 embedding 127.0.0.1", "embedding 127.0.0.1"},
		{false, "https://[2002:a9fe:a9fe::]/", "embedding 169.254.169.254", "embedding 169.254.169.254"},
		{false, "https://[2002:c0a8:101::1]/", "embedding 192.168.1.1", "embedding 192.168.1.1"},
		{false, "https://[2002:c000:201::1]/", "embedding 192.0.2.1", "embedding 192.0.2.1"},
		{false, "https://[2002:808:808::1]/", "", ""},
		{false, "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "Teredo 2001::/32 embedding 127.0.0.1", "embedding 127.0.0.1"},
		{false, "https://[2001:0:4136:e378:8000:63bf:5601:5601]/", "embedding 169.254.169.254", "embedding 169.254.169.254"},
		{false, "https://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", "embedding 10.0.0.1", "embedding 10.0.0.1"},
		{false, "https://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/", "", ""},
		{false, "https://[2001:4860::5efe:7f00:1]/", "ISATAP", "embedding 127.0.0.1"},
		{false, "https://[2001:4860::200:5efe:a00:1]/", "embedding 10.0.0.1", "embedding 10.0.0.1"},
		{false, "https://[2001:4860::5efe:808:808]/", "", ""},
		// host names that URL parsers in browsers and curl read as IPv4
		{false, "https://2130706433/", "numeric form of the IPv4 address 127.0.0.1", noDial},
		{false, "https://0177.0.0.1/", "IPv4 address 127.0.0.1", noDial},
		{false, "https://0x7f.0.0.1/", "IPv4 address 127.0.0.1", noDial},
		{false, "https://0X7F.0.0.1/", "IPv4 address 127.0.0.1", noDial},
		{false, "https://127.1/", "IPv4 address 127.0.0.1", noDial},
		{false, "https://0x7f000001/", "IPv4 address 127.0.0.1", noDial},
		{false, "https://0x7f.1/", "IPv4 address 127.0.0.1", noDial},
		{false, "https://0177.0x0.1/", "IPv4 address 127.0.0.1", noDial},
		{false, "https://0x7f.0.0x0.01/", "IPv4 address 127.0.0.1", noDial},
		{false, "https://169.16689662/", "IPv4 address 169.254.169.254", noDial},
		{false, "https://127.0.0.1./", "IPv4 address 127.0.0.1", noDial},
		{false, "https://010.0.0.1/", "IPv4 address 8.0.0.1", noDial},
		{false, "https://134744072/", "IPv4 address 8.8.8.8", noDial},
		{false, "https://0x/", "IPv4 address 0.0.0.0", noDial},
		{false, "https://1.2.3.4.5/", "ends in a number", noDial},
		{false, "https://256.0.0.1/", "ends in a number", noDial},
		{false, "https://4294967296/", "ends in a number", noDial},
		{false, "https://example.123/", "ends in a number", noDial},
		{false, "https://example.0x1g/", "", noDial},
		{false, "https://123.example.com/", "", noDial},
		{false, "https://0x7f.example.com/", "", noDial},
		{false, "https://１２７.０.０.１/", "not ASCII", noDial},
		{false, "https://127。0。0。1/", "not ASCII", noDial},
		{true, "http://2130706433/", "IPv4 address 127.0.0.1", noDial},
		// names
		{false, "https://internal.test/", "resolves to 10.0.0.5", noDial},
		{false, "https://nat64.test/", "resolves to 64:ff9b::7f00:1", "embedding 127.0.0.1"},
		{false, "https://sixtofour.test/", "resolves to 2002:a9fe:a9fe::1", "embedding 169.254.169.254"},
		{false, "https://localhost/", "local name", noDial},
		{false, "https://LOCALHOST./", "local name", noDial},
		{false, "https://api.localhost/", "local name", noDial},
		{false, "https://metadata.google.internal/", "local name", noDial},
		// private targets allowed (development)
		{true, "http://127.0.0.1:8080/hook", "", ""},
		{true, "https://localhost/", "", noDial},
		{true, "https://[64:ff9b::7f00:1]/", "", ""},
		{true, "http://[fe80::1%25eth0]:8080/", "", ""},
		{true, "ftp://x/", "scheme", noDial},
	} {
		p := Policy{}
		if tc.open {
			p = open
		}
		err := p.CheckAddress(context.Background(), tc.addr, testLookup)
		switch {
		case tc.reg == "" && err != nil:
			t.Errorf("register %q (open %v) = %v, want ok", tc.addr, tc.open, err)
		case tc.reg != "" && (err == nil || !strings.Contains(err.Error(), tc.reg)):
			t.Errorf("register %q (open %v) = %v, want error containing %q", tc.addr, tc.open, err, tc.reg)
		}
		if tc.dial == noDial {
			continue
		}
		ip, ok := dialAddr(tc.addr)
		if !ok {
			t.Errorf("%q: no single address to dial; mark the row %q", tc.addr, noDial)
			continue
		}
		err = p.Control("tcp", netip.AddrPortFrom(ip, 443).String(), nil)
		switch {
		case tc.dial == "" && err != nil:
			t.Errorf("dial %s for %q (open %v) = %v, want ok", ip, tc.addr, tc.open, err)
		case tc.dial != "" && (!errors.Is(err, ErrForbiddenTarget) || !strings.Contains(err.Error(), tc.dial)):
			t.Errorf("dial %s for %q (open %v) = %v, want ErrForbiddenTarget containing %q", ip, tc.addr, tc.open, err, tc.dial)
		}
	}
}

// dialAddr is the address the dialer would connect to for a table row.
func dialAddr(raw string) (netip.Addr, bool) {
	u, err := url.Parse(raw)
	if err != nil {
		return netip.Addr{}, false
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil {
		return ip, true
	}
	ips, err := testLookup(context.Background(), u.Hostname())
	if err != nil || len(ips) != 1 {
		return netip.Addr{}, false
	}
	return ips[0], true
}

func TestDialerRefusesLoopbackAfterResolution(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	addr := net.JoinHostPort("localhost", strconv.Itoa(port)) // a name, resolved at dial time
	_, err = Policy{}.Dialer(time.Second).Dial("tcp", addr)
	if !errors.Is(err, ErrForbiddenTarget) {
		t.Fatalf("strict dial to %s: %v, want ErrForbiddenTarget", addr, err)
	}
	c, err := Policy{AllowPrivate: true}.Dialer(time.Second).Dial("tcp", addr)
	if err != nil {
		t.Fatalf("permissive dial: %v", err)
	}
	c.Close()
}
