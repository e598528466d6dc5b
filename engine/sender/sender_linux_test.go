package sender

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// blackhole returns the address of a loopback listener whose accept queue is
// full (backlog 0, one connection queued and never accepted): Linux drops
// further SYNs, so a dial hangs like one to a firewalled host.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "blackhole")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	addr := ln.Addr().String()
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return addr // full: this dial hung
			}
			t.Fatalf("filling the accept queue: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		if i == 8 {
			t.Skip("accept queue never filled; cannot simulate a dropped SYN here")
		}
	}
}

func TestSendDialTimeout(t *testing.T) {
	addr := blackhole(t)
	const timeout = 300 * time.Millisecond
	s := New(Options{Policy: devPolicy, Timeout: timeout})
	start := time.Now()
	res := s.Send("http://"+addr+"/", testBody, testID, testSig)
	elapsed := time.Since(start)
	wantTransportFailure(t, res, "timeout")
	if elapsed >= 3*time.Second {
		t.Fatalf("Send took %v with a %v timeout", elapsed, timeout)
	}
}
