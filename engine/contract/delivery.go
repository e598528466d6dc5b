package contract

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math"
	"time"
)

// DeliveryIDLen is the length of a delivery id (a UUID in text form).
const DeliveryIDLen = 36

// AppendDeliveryID appends the X-Gecko-Delivery id of one (event, webhook)
// delivery: a version-8 UUID derived from the event's Kafka coordinates and
// the webhook id, so every retry and every replay after a crash carries the
// same id.
func AppendDeliveryID(dst []byte, topic string, partition int32, offset int64, webhookID string) []byte {
	var stack [256]byte
	in := append(stack[:0], topic...)
	in = append(in, 0)
	in = binary.BigEndian.AppendUint32(in, uint32(partition))
	in = binary.BigEndian.AppendUint64(in, uint64(offset))
	in = append(in, webhookID...)
	sum := sha256.Sum256(in)
	u := sum[:16]
	u[6] = (u[6] & 0x0f) | 0x80 // version 8
	u[8] = (u[8] & 0x3f) | 0x80 // RFC 9562 variant
	for i, b := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, hexDigits[b>>4], hexDigits[b&0xf])
	}
	return dst
}

// DeliveryID returns AppendDeliveryID as a string.
func DeliveryID(topic string, partition int32, offset int64, webhookID string) string {
	var buf [DeliveryIDLen]byte
	return string(AppendDeliveryID(buf[:0], topic, partition, offset, webhookID))
}

// Outcome is what a delivery attempt means for the webhook.
type Outcome uint8

const (
	// Success: a status 200-399. The delivery is done.
	Success Outcome = iota + 1
	// Gone: 410 Gone. The webhook is deleted and the delivery dropped.
	Gone
	// Failure: any other status, a timeout or a transport error. Retried.
	Failure
)

func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Gone:
		return "gone"
	case Failure:
		return "failure"
	}
	return "unknown"
}

// Classify maps an attempt's result to its Outcome. err is the transport
// error, if any; status is the HTTP status when a response was read.
func Classify(status int, err error) Outcome {
	if err != nil {
		return Failure
	}
	switch {
	case status == 410:
		return Gone
	case status >= 200 && status <= 399:
		return Success
	}
	return Failure
}

// DefaultMaxRetries is Sidekiq's default retry count.
const DefaultMaxRetries = 25

// ErrNoMoreRetries is returned by NextAttempt when a delivery is dead.
var ErrNoMoreRetries = errors.New("no retries left")

// RetryDelay is Sidekiq's default backoff: retry n (n = 0 for the first retry)
// waits n^4 + 15 + rand(10*(n+1)) seconds. randn(k) must return a uniform
// integer in [0, k), like math/rand/v2.IntN.
func RetryDelay(n int, randn func(int) int) time.Duration {
	if n < 0 {
		n = 0
	}
	p := math.Pow(float64(n), 4)
	secs := time.Duration(p)*time.Second + 15*time.Second
	return secs + time.Duration(randn(10*(n+1)))*time.Second
}

// NextAttempt returns when retry n of a delivery is due, or ErrNoMoreRetries
// once n reaches maxRetries (the delivery is then dead).
func NextAttempt(now time.Time, n, maxRetries int, randn func(int) int) (time.Time, error) {
	if n >= maxRetries {
		return time.Time{}, ErrNoMoreRetries
	}
	return now.Add(RetryDelay(n, randn)), nil
}
