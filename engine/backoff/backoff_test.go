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

func TestTriesGivesUpAfterNWithoutAWaitAfterTheLast(t *testing.T) {
	away := errors.New("away")
	var waits []time.Duration
	tries := 0
	err := Tries(context.Background(), 3, time.Millisecond, time.Hour, func() error {
		tries++
		return away
	}, func(_ error, wait time.Duration) { waits = append(waits, wait) })
	if !errors.Is(err, away) || tries != 3 {
		t.Fatalf("err %v after %d tries, want the op's error after 3", err, tries)
	}
	if len(waits) != 2 || waits[0] != time.Millisecond || waits[1] != 2*time.Millisecond {
		t.Fatalf("waits %v, want [1ms 2ms]", waits)
	}
}

func TestWaitsDoubleUpToTheLimitAndReset(t *testing.T) {
	w := NewWaits(time.Second, 3*time.Second)
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second} {
		if got := w.Next(); got != want {
			t.Fatalf("wait %d = %v, want %v", i, got, want)
		}
	}
	w.Reset()
	if got := w.Next(); got != time.Second {
		t.Fatalf("after Reset: %v, want 1s", got)
	}
}

func TestSleepIsCutByTheContext(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep without a cancel did not wait the whole time")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) || time.Since(start) > time.Second {
		t.Fatal("Sleep did not end with its context")
	}
}
