package netguard

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestForbidden(t *testing.T) {
	f := func(ip string, forbidden bool) {
		t.Helper()
		if got := Forbidden(netip.MustParseAddr(ip)) != ""; got != forbidden {
			t.Errorf("Forbidden(%s) = %v, want %v", ip, got, forbidden)
		}
	}
	f("127.0.0.1", true)
	f("127.8.9.10", true)
	f("::1", true)
	f("10.1.2.3", true)
	f("172.16.0.1", true)
	f("192.168.1.1", true)
	f("169.254.169.254", true)
	f("fe80::1", true)
	f("fd00:ec2::254", true)
	f("224.0.0.1", true)
	f("0.0.0.0", true)
	f("::", true)
	f("100.64.0.1", true)
	f("::ffff:127.0.0.1", true)
	f("::ffff:10.0.0.1", true)
	f("255.255.255.255", true)
	f("8.8.8.8", false)
	f("1.1.1.1", false)
	f("2606:4700::1111", false)
}

func TestCheckAddress(t *testing.T) {
	strict := Policy{}
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		switch host {
		case "internal.test":
			return []netip.Addr{netip.MustParseAddr("93.184.216.34"), netip.MustParseAddr("10.0.0.5")}, nil
		case "public.test":
			return []netip.Addr{netip.MustParseAddr("93.184.216.34")}, nil
		}
		return nil, errors.New("no such host")
	}
	f := func(p Policy, addr, wantErr string) {
		t.Helper()
		err := p.CheckAddress(context.Background(), addr, lookup)
		switch {
		case wantErr == "" && err != nil:
			t.Errorf("CheckAddress(%q) = %v, want ok", addr, err)
		case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
			t.Errorf("CheckAddress(%q) = %v, want error containing %q", addr, err, wantErr)
		}
	}
	f(strict, "https://public.test/hooks", "")
	f(strict, "https://unresolvable.test/hooks", "")
	f(strict, "http://public.test/hooks", "https")
	f(strict, "ftp://public.test/", "scheme")
	f(strict, "/relative", "absolute")
	f(strict, "public.test/hooks", "absolute")
	f(strict, "https://user:pw@public.test/", "credentials")
	f(strict, "https://127.0.0.1:8080/", "loopback")
	f(strict, "https://[::1]/", "loopback")
	f(strict, "https://169.254.169.254/latest/meta-data", "link-local")
	f(strict, "https://localhost/", "local name")
	f(strict, "https://internal.test/", "private")
	f(strict, "https://x.test/"+strings.Repeat("a", 3000), "longer")
	open := Policy{AllowPrivate: true, AllowHTTP: true}
	f(open, "http://127.0.0.1:8080/hook", "")
	f(open, "https://localhost/", "")
	f(open, "ftp://x/", "scheme")
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
