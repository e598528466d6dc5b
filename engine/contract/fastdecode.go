package contract

import (
	"strconv"
	"unicode/utf8"

	"github.com/geckohook/geckohook/engine/catalog"
)

// decodeFast decodes the common shape of an event without encoding/json:
// one flat object with only the known keys, once each, plain strings (no
// escapes) and integers. It accepts only input that decodeSlow would decode
// to the same Event (FuzzDecodeEvent checks this); for anything else,
// errors included, it returns false and the caller uses decodeSlow, which
// also explains what is wrong.
func decodeFast(value, key []byte, recordTime int64, cat *catalog.Catalog, intern func([]byte) string) (Event, bool) {
	if intern == nil {
		intern = newString
	}
	var ev Event
	var (
		seen     uint8
		tsPassed bool
	)
	const (
		sAccount = 1 << iota
		sEvent
		sObject
		sTimestamp
		sURL
	)
	i := skipSpace(value, 0)
	if i >= len(value) || value[i] != '{' {
		return ev, false
	}
	i = skipSpace(value, i+1)
	if i < len(value) && value[i] == '}' {
		return ev, false // empty object: missing fields, let the slow path say so
	}
	for {
		k, j, ok := plainString(value, i)
		if !ok {
			return ev, false
		}
		i = skipSpace(value, j)
		if i >= len(value) || value[i] != ':' {
			return ev, false
		}
		i = skipSpace(value, i+1)
		var bit uint8
		switch string(k) {
		case "account_id":
			bit = sAccount
			if s, j, ok := plainString(value, i); ok {
				if len(s) == 0 || len(s) > 256 {
					return ev, false
				}
				ev.AccountID, i = intern(s), j
			} else if n, j, ok := integer(value, i); ok {
				if _, err := strconv.ParseInt(string(n), 10, 64); err != nil {
					return ev, false
				}
				ev.AccountID, i = intern(n), j
			} else {
				return ev, false
			}
		case "event":
			bit = sEvent
			s, j, ok := plainString(value, i)
			if !ok {
				return ev, false
			}
			name, known := cat.Canonical(s)
			if !known {
				return ev, false
			}
			ev.Event, i = name, j
		case "object_id":
			bit = sObject
			v, j, ok := nonNegative(value, i)
			if !ok {
				return ev, false
			}
			ev.ObjectID, i = v, j
		case "timestamp":
			bit = sTimestamp
			v, j, ok := nonNegative(value, i)
			if !ok {
				return ev, false
			}
			ev.Timestamp, i, tsPassed = v, j, true
		case "resource_url":
			bit = sURL
			s, j, ok := plainString(value, i)
			if !ok || len(s) > MaxFieldLen {
				return ev, false
			}
			ev.ResourceURL, i = string(s), j
		default:
			return ev, false
		}
		if seen&bit != 0 {
			return ev, false // duplicate key: encoding/json keeps the last one
		}
		seen |= bit
		i = skipSpace(value, i)
		if i >= len(value) {
			return ev, false
		}
		if value[i] == '}' {
			i++
			break
		}
		if value[i] != ',' {
			return ev, false
		}
		i = skipSpace(value, i+1)
	}
	if skipSpace(value, i) != len(value) {
		return ev, false
	}
	if seen&sEvent == 0 || seen&sObject == 0 {
		return ev, false
	}
	if seen&sAccount == 0 {
		if len(key) == 0 || len(key) > 256 {
			return ev, false
		}
		ev.AccountID = intern(key)
	}
	if !tsPassed {
		ev.Timestamp = recordTime
	}
	return ev, true
}

func newString(b []byte) string { return string(b) }

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads a JSON string at b[i] that has no escapes and no
// control characters, returning its contents and the index after it.
func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			s := b[i+1 : j]
			if !utf8.Valid(s) {
				return nil, i, false
			}
			return s, j + 1, true
		case c == '\\' || c < 0x20:
			return nil, i, false
		}
	}
	return nil, i, false
}

// nonNegative reads a JSON integer at b[i] that fits an int64 and is >= 0.
func nonNegative(b []byte, i int) (int64, int, bool) {
	n, j, ok := integer(b, i)
	if !ok {
		return 0, i, false
	}
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || v < 0 {
		return 0, i, false
	}
	return v, j, true
}

// integer reads a JSON integer (-?(0|[1-9][0-9]*)) at b[i] that is not
// followed by a fraction or exponent.
func integer(b []byte, i int) ([]byte, int, bool) {
	j := i
	if j < len(b) && b[j] == '-' {
		j++
	}
	start := j
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	digits := j - start
	if digits == 0 || (digits > 1 && b[start] == '0') {
		return nil, i, false
	}
	if j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E') {
		return nil, i, false
	}
	return b[i:j], j, true
}
