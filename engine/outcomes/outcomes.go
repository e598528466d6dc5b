// Package outcomes owns the record dispatchers publish to the Kafka topic
// geckohook.outcomes (key = webhook id, msgpack value) whenever a delivery
// outcome matters to failure tracking: a failure, the first success after a
// failure (or any retry's success), a 410 Gone, a delivery gone dead. It is
// pure data and its encoding; package publish sends the records and package
// streak judges them.
package outcomes

import (
	"errors"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// DefaultTopic is the outcomes topic.
const DefaultTopic = "geckohook.outcomes"

// Kind is what happened to a delivery attempt.
type Kind uint8

// The kinds of outcome.
const (
	Failure Kind = 1 // an attempt failed (status outside 200–399 and not 410, timeout, connection error)
	Success Kind = 2 // an attempt succeeded (only forwarded after a failure, or for a retry)
	Gone    Kind = 3 // the endpoint answered 410 Gone; the webhook is deleted
	Dead    Kind = 4 // a delivery is past its last retry (its failure was published too)
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case Failure:
		return "failure"
	case Success:
		return "success"
	case Gone:
		return "gone"
	case Dead:
		return "dead"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Outcome is one record of the outcomes topic.
type Outcome struct {
	Kind       Kind      `msgpack:"k"`
	WebhookID  string    `msgpack:"w"`
	AppID      string    `msgpack:"a"`
	AccountID  string    `msgpack:"c"`
	Event      string    `msgpack:"e"`
	Address    string    `msgpack:"u"`
	DeliveryID string    `msgpack:"d"`
	Status     int       `msgpack:"s"`
	Error      string    `msgpack:"x"`
	Attempt    int       `msgpack:"n"` // 1 for the first attempt of a delivery
	At         time.Time `msgpack:"t"`
}

// MaxError bounds the error text carried by one outcome.
const MaxError = 512

// Encode returns the msgpack form of o.
func Encode(o *Outcome) ([]byte, error) {
	b, err := msgpack.Marshal(o)
	if err != nil {
		return nil, fmt.Errorf("cannot encode outcome: %w", err)
	}
	return b, nil
}

// Decode reads one record of the outcomes topic; a record without a webhook
// id or with an unknown kind is an error.
func Decode(b []byte) (*Outcome, error) {
	o := new(Outcome)
	if err := msgpack.Unmarshal(b, o); err != nil {
		return nil, fmt.Errorf("cannot decode outcome: %w", err)
	}
	if o.WebhookID == "" {
		return nil, errors.New("cannot use outcome: no webhook id")
	}
	if o.Kind < Failure || o.Kind > Dead {
		return nil, fmt.Errorf("cannot use outcome: unknown kind %d", o.Kind)
	}
	return o, nil
}
