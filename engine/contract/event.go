package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/geckohook/geckohook/engine/catalog"
)

// Event is one account event as producers write it to Kafka (JSON value,
// key = account id).
type Event struct {
	AccountID   string `json:"account_id"`
	Event       string `json:"event"`
	ObjectID    int64  `json:"object_id"`
	Timestamp   int64  `json:"timestamp"`              // Unix seconds
	ResourceURL string `json:"resource_url,omitempty"` // built from the catalog when empty
}

// DecodeError says why a Kafka value is not a deliverable event. Its Reason is
// a short machine-readable code put in the dead-letter record's headers.
type DecodeError struct {
	Reason string // "invalid_json", "missing_field", "invalid_field", "unknown_event"
	Detail string
}

func (e *DecodeError) Error() string { return e.Reason + ": " + e.Detail }

type wireEvent struct {
	AccountID   json.RawMessage `json:"account_id"`
	Event       *string         `json:"event"`
	ObjectID    json.RawMessage `json:"object_id"`
	Timestamp   json.RawMessage `json:"timestamp"`
	ResourceURL *string         `json:"resource_url"`
}

// MaxFieldLen bounds every string field of an event.
const MaxFieldLen = 2048

// DecodeEvent parses a Kafka record into an Event and checks it against the
// catalog. key is the record key (the account id, used when the value has
// none); recordTime is the record's timestamp in Unix seconds, used when the
// value has none.
func DecodeEvent(value, key []byte, recordTime int64, cat *catalog.Catalog) (Event, error) {
	return DecodeEventInterned(value, key, recordTime, cat, nil)
}

// DecodeEventInterned is DecodeEvent with the account id, in the common
// shape of an event, made by intern from its bytes: intern may return a
// string it made before for the same bytes, so that decoding an event of
// an account seen before allocates nothing. Nil interns nothing.
func DecodeEventInterned(value, key []byte, recordTime int64, cat *catalog.Catalog, intern func([]byte) string) (Event, error) {
	if ev, ok := decodeFast(value, key, recordTime, cat, intern); ok {
		return ev, nil
	}
	return decodeSlow(value, key, recordTime, cat)
}

// decodeSlow is the reference decoder, on encoding/json: it takes any JSON
// and says exactly what is wrong with it.
func decodeSlow(value, key []byte, recordTime int64, cat *catalog.Catalog) (Event, error) {
	var w wireEvent
	if !utf8.Valid(value) {
		return Event{}, &DecodeError{"invalid_json", "value is not valid UTF-8"}
	}
	if err := json.Unmarshal(value, &w); err != nil {
		// Valid JSON of the wrong type: a field error, or a value that is
		// not an object at all.
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te) && te.Field != "":
			return Event{}, &DecodeError{"invalid_field", fmt.Sprintf("%s must be a JSON string, not %s", te.Field, te.Value)}
		case errors.As(err, &te):
			return Event{}, &DecodeError{"invalid_json", fmt.Sprintf("value must be a JSON object, not %s", te.Value)}
		}
		return Event{}, &DecodeError{"invalid_json", err.Error()}
	}
	var ev Event
	switch {
	case len(w.AccountID) > 0 && string(w.AccountID) != "null":
		id, err := idString(w.AccountID)
		if err != nil {
			return Event{}, &DecodeError{"invalid_field", "account_id: " + err.Error()}
		}
		ev.AccountID = id
	case len(key) > 0:
		ev.AccountID = string(key)
	default:
		return Event{}, &DecodeError{"missing_field", "account_id is missing and the record has no key"}
	}
	if ev.AccountID == "" || len(ev.AccountID) > 256 {
		return Event{}, &DecodeError{"invalid_field", "account_id must be 1 to 256 characters"}
	}
	if w.Event == nil || *w.Event == "" {
		return Event{}, &DecodeError{"missing_field", "event is missing"}
	}
	ev.Event = *w.Event
	if _, ok := cat.ResourcePath(ev.Event); !ok {
		return Event{}, &DecodeError{"unknown_event", fmt.Sprintf("event %.100q is not in the catalog", ev.Event)}
	}
	if len(w.ObjectID) == 0 || string(w.ObjectID) == "null" {
		return Event{}, &DecodeError{"missing_field", "object_id is missing"}
	}
	oid, err := strconv.ParseInt(string(w.ObjectID), 10, 64)
	if err != nil || oid < 0 {
		return Event{}, &DecodeError{"invalid_field", fmt.Sprintf("object_id %.40s is not a non-negative integer", w.ObjectID)}
	}
	ev.ObjectID = oid
	if len(w.Timestamp) == 0 || string(w.Timestamp) == "null" {
		ev.Timestamp = recordTime
	} else {
		ts, err := strconv.ParseInt(string(w.Timestamp), 10, 64)
		if err != nil || ts < 0 {
			return Event{}, &DecodeError{"invalid_field", fmt.Sprintf("timestamp %.40s is not Unix seconds", w.Timestamp)}
		}
		ev.Timestamp = ts
	}
	if w.ResourceURL != nil {
		if len(*w.ResourceURL) > MaxFieldLen {
			return Event{}, &DecodeError{"invalid_field", "resource_url is too long"}
		}
		ev.ResourceURL = *w.ResourceURL
	}
	return ev, nil
}

// idString accepts an id written as a JSON string or a JSON integer.
func idString(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", err
		}
		return s, nil
	}
	if _, err := strconv.ParseInt(string(raw), 10, 64); err != nil {
		return "", fmt.Errorf("%.40s is neither a string nor an integer", raw)
	}
	return string(raw), nil
}

// AppendValue appends ev as a Kafka value: compact JSON with the keys
// account_id, event, object_id, timestamp and (when set) resource_url,
// strings escaped as in AppendBody. An Event DecodeEvent returned (with a
// non-negative timestamp and a UTF-8 account id) decodes back to itself,
// and on the fast path when none of its strings needs an escape; the API
// writes ingested events with it.
func AppendValue(dst []byte, ev *Event) []byte {
	dst = append(dst, `{"account_id":`...)
	dst = appendJSONString(dst, ev.AccountID)
	dst = append(dst, `,"event":`...)
	dst = appendJSONString(dst, ev.Event)
	dst = append(dst, `,"object_id":`...)
	dst = strconv.AppendInt(dst, ev.ObjectID, 10)
	dst = append(dst, `,"timestamp":`...)
	dst = strconv.AppendInt(dst, ev.Timestamp, 10)
	if ev.ResourceURL != "" {
		dst = append(dst, `,"resource_url":`...)
		dst = appendJSONString(dst, ev.ResourceURL)
	}
	return append(dst, '}')
}

// AppendBody appends the webhook body of ev to dst: compact JSON with the
// keys object_id, event, timestamp, resource_url in that order, escaped the
// way Ruby's JSON generator does (no HTML escaping, UTF-8 kept as is), so a
// receiver that parses it and calls to_json gets the same bytes back.
// resourceBase is used when ev has no ResourceURL, with the catalog's path.
func AppendBody(dst []byte, ev *Event, resourceBase string, cat *catalog.Catalog) []byte {
	dst = append(dst, `{"object_id":`...)
	dst = strconv.AppendInt(dst, ev.ObjectID, 10)
	dst = append(dst, `,"event":`...)
	dst = appendJSONString(dst, ev.Event)
	dst = append(dst, `,"timestamp":`...)
	dst = strconv.AppendInt(dst, ev.Timestamp, 10)
	dst = append(dst, `,"resource_url":`...)
	if ev.ResourceURL != "" {
		dst = appendJSONString(dst, ev.ResourceURL)
	} else {
		path, _ := cat.ResourcePath(ev.Event)
		dst = append(dst, '"')
		dst = appendEscaped(dst, resourceBase)
		dst = append(dst, '/')
		dst = appendEscaped(dst, path)
		dst = append(dst, '/')
		dst = strconv.AppendInt(dst, ev.ObjectID, 10)
		dst = append(dst, `.json"`...)
	}
	return append(dst, '}')
}

// AppendBodyOf appends the body AppendBody writes for an event whose
// resource URL is urlPrefix + "/{objectID}.json", without building that
// URL: the retry queue stores a body as its event, URL prefix, object id
// and timestamp and rebuilds it on every claim.
func AppendBodyOf(dst []byte, event, urlPrefix string, objectID, timestamp int64) []byte {
	dst = append(dst, `{"object_id":`...)
	dst = strconv.AppendInt(dst, objectID, 10)
	dst = append(dst, `,"event":`...)
	dst = appendJSONString(dst, event)
	dst = append(dst, `,"timestamp":`...)
	dst = strconv.AppendInt(dst, timestamp, 10)
	dst = append(dst, `,"resource_url":"`...)
	dst = appendEscaped(dst, urlPrefix)
	dst = append(dst, '/')
	dst = strconv.AppendInt(dst, objectID, 10)
	return append(dst, `.json"}`...)
}

func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	dst = appendEscaped(dst, s)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// appendEscaped escapes like Ruby's json generator (script_safe off): '"',
// '\\' and control characters below 0x20; everything else, '/' and non-ASCII
// included, is copied as is. Invalid UTF-8 becomes U+FFFD, as Go's decoder
// would have produced anyway.
func appendEscaped(dst []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, "\ufffd"...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	return append(dst, s[start:]...)
}
