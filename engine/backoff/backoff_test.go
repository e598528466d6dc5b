package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestRetryDoublesUpToTheLimitUntilItWorks(t *testing.T) {
	var waits []time.Duration
	tries := 0
	ok := Retry(context.Background(), time.Millisecond, 4*time.Millisecond, func() error {
		tries++
		if tries < 5 {
			return errors.New("away")
		}
		return nil
	}, func(err error, wait time.Duration) { waits = append(waits, wait) })
	if !ok || tries != 5 {
		t.Fatalf("ok %v after %d tries, want true after 5", ok, tries)
	}
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond, 4 * time.Millisecond}
	if len(waits) != len(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
}

func TestRetryStopsWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	tries := 0
	ok := Retry(ctx, time.Hour, time.Hour, func() error {
		tries++
		return errors.New("away")
	}, func(error, time.Duration) { cancel() })
	if ok || tries != 1 {
		t.Fatalf("ok %v after %d tries, want false after 1 (the hour-long wait cut by the cancel)", ok, tries)
	}
}
