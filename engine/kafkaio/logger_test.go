package kafkaio

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// readTimeout returns the error a read past its deadline gives on a real
// TCP connection, as kafka-go sees it on an idle fetch.
func readTimeout(t *testing.T) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err = conn.Read(make([]byte, 1))
	if err == nil {
		t.Fatal("read returned no error past its deadline")
	}
	return err
}

func TestReaderLogLevel(t *testing.T) {
	timeout := readTimeout(t)
	f := func(want zerolog.Level, format string, args ...any) {
		t.Helper()
		if got := ReaderLogLevel(format, args...); got != want {
			t.Errorf("ReaderLogLevel(%q) = %v, want %v", fmt.Sprintf(format, args...), got, want)
		}
	}
	// The formats kafka-go v0.4 logs (reader.go).
	unknown := "the kafka reader got an unknown error reading partition %d of %s at offset %d: %s"
	initializing := "error initializing the kafka reader for partition %d of %s: %s"

	f(zerolog.DebugLevel, unknown, 3, "geckohook.outcomes", 0, timeout)
	f(zerolog.DebugLevel, unknown, 3, "geckohook.outcomes", 0, fmt.Errorf("fetch: %w", timeout))
	f(zerolog.WarnLevel, unknown, 3, "geckohook.outcomes", 0, errors.New("connection reset by peer"))
	f(zerolog.WarnLevel, unknown, 3, "geckohook.outcomes", 0, "i/o timeout") // not an error value: cannot tell
	f(zerolog.WarnLevel, initializing, 3, "geckohook.outcomes", timeout)     // cannot reach the broker
	f(zerolog.WarnLevel, "%v", timeout)                                      // the group's commit or join
}

func TestErrorLoggerLevels(t *testing.T) {
	var b bytes.Buffer
	l := ErrorLogger(zerolog.New(&b).Level(zerolog.InfoLevel))
	l.Printf("the kafka reader got an unknown error reading partition %d of %s at offset %d: %s", 1, "t", 0, readTimeout(t))
	if b.Len() != 0 {
		t.Errorf("an idle fetch's timeout was logged at info: %s", b.String())
	}
	l.Printf("the kafka reader got an unknown error reading partition %d of %s at offset %d: %s", 1, "t", 0, errors.New("broken pipe"))
	if !strings.Contains(b.String(), `"level":"warn"`) || !strings.Contains(b.String(), "broken pipe") {
		t.Errorf("a real error is not a warning: %s", b.String())
	}
}
