package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os/exec"
	"testing"
	"time"
)

// A taken port fails before anything starts: one line, exit code 1, no
// embedded Kafka or Redis, no waiting for Kafka or Redis, no "running".
func TestTakenPortFailsBeforeAnythingStarts(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	// Nothing listens on port 1: a role that reached Kafka or Redis first
	// would wait for them instead of failing.
	unreachable := []string{"--kafka-brokers", "127.0.0.1:1", "--redis-addr", "127.0.0.1:1"}
	f := func(want string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, binary, args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("geckohook %v did not fail within 20s on a taken port", args)
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("geckohook %v: %v, want exit code 1", args, err)
		}
		if stdout.Len() != 0 || stderr.String() != want+"\n" {
			t.Errorf("geckohook %v printed\nstdout %q\nstderr %q\nwant only %q", args, stdout.String(), stderr.String(), want)
		}
	}
	// all with the embedded Kafka and Redis: neither starts (either would
	// print its address first).
	f("geckohook all: cannot listen on "+addr+" for the API: address already in use",
		"all", "--api-listen", addr, "--embedded-kafka-listen", freeAddr(t))
	f("geckohook all: cannot listen on "+addr+" for the profiles: address already in use",
		"all", "--api-listen", freeAddr(t), "--pprof-listen", addr, "--embedded-kafka-listen", freeAddr(t))
	f("geckohook broker: cannot listen on "+addr+" for the profiles: address already in use",
		"broker", "--pprof-listen", addr, "--embedded-kafka-listen", freeAddr(t))
	f("geckohook dispatcher: cannot listen on "+addr+" for the metrics and health endpoint: address already in use",
		append([]string{"dispatcher", "--metrics-listen", addr}, unreachable...)...)
	f("geckohook coordinator: cannot listen on "+addr+" for the metrics and health endpoint: address already in use",
		append([]string{"coordinator", "--metrics-listen", addr}, unreachable...)...)
	f("geckohook api: cannot listen on "+addr+" for the API: address already in use",
		append([]string{"api", "--api-listen", addr}, unreachable...)...)
	f("geckohook api: cannot listen on nonsense for the API: address nonsense: missing port in address",
		append([]string{"api", "--api-listen", "nonsense"}, unreachable...)...)
}
