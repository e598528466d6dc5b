package contract

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/geckohook/geckohook/engine/catalog"
)

// FuzzAppendBody checks the webhook body against the contract for any
// event: it is JSON that encoding/json parses back to the event's values
// (invalid UTF-8 read as U+FFFD, byte by byte, as Go's decoder does), with
// the four keys in order, and a receiver that parses it and re-serialises it
// with Ruby's to_json gets the same bytes. When url is empty the event name
// is taken from the catalog (pick chooses it) and resource_url is built
// from base, as for events without one. AppendBodyOf of url as a prefix
// writes what AppendBody writes for the whole URL.
func FuzzAppendBody(f *testing.F) {
	strs := []string{
		"https://api.tradegecko.com/fulfillments/1234567.json",
		"https://x.test/a?b=1&c=<d>&e='f'", // no HTML escaping
		`quote " backslash \ slash /`,
		"\x00\x01\x07\b\t\n\v\f\r\x0e\x1b\x1f\x20\x7f",
		"café/日本/\u2028\u2029/😀/\ufffd/\u00a0/\ufeff",
		"\xff", "a\xc0\xafb", "\xed\xa0\x80", "\xe6\x97", "\xf0\x9f\x98", "\xf4\x90\x80\x80",
		`\u0041 \ud83d \/`, "",
	}
	for i, s := range strs {
		f.Add(int64(1234567), int64(1546272000), "fulfillments.create", s, "https://api.tradegecko.com", uint8(i))
		f.Add(int64(0), int64(-1), s, "https://x.test/"+s, s, uint8(i))
		f.Add(int64(math.MaxInt64), int64(math.MinInt64), "order.create", "", s, uint8(i))
	}
	cat := catalog.Default()
	names := cat.Names()
	f.Fuzz(func(t *testing.T, objectID, timestamp int64, event, url, base string, pick uint8) {
		ev := Event{AccountID: "acc", Event: event, ObjectID: objectID, Timestamp: timestamp, ResourceURL: url}
		wantURL := url
		if url == "" {
			ev.Event = names[int(pick)%len(names)]
			path, _ := cat.ResourcePath(ev.Event)
			wantURL = base + "/" + path + "/" + strconv.FormatInt(objectID, 10) + ".json"
		}
		prefix := []byte("prefix")
		out := AppendBody(prefix, &ev, base, cat)
		if !bytes.HasPrefix(out, prefix) {
			t.Fatalf("AppendBody overwrote dst: %q", out)
		}
		body := out[len(prefix):]
		if !bytes.Equal(body, AppendBody(nil, &ev, base, cat)) {
			t.Fatalf("AppendBody depends on dst")
		}
		got, err := parseBody(body)
		if err != nil {
			t.Fatalf("body %q does not parse: %v", body, err)
		}
		want := []bodyField{
			{"object_id", strconv.FormatInt(objectID, 10)},
			{"event", goDecoded(ev.Event)},
			{"timestamp", strconv.FormatInt(timestamp, 10)},
			{"resource_url", goDecoded(wantURL)},
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("body %q parses to %q, want %q", body, got, want)
		}
		if again := rubyToJSON(got); again != string(body) {
			t.Fatalf("Ruby's to_json of the parsed body differs:\n body %q\n ruby %q", body, again)
		}
		// The retry queue's rebuild from a URL prefix (url here) writes
		// what AppendBody writes for the whole URL.
		whole := ev
		whole.ResourceURL = url + "/" + strconv.FormatInt(objectID, 10) + ".json"
		if of, want := AppendBodyOf(nil, ev.Event, url, objectID, timestamp), AppendBody(nil, &whole, base, cat); !bytes.Equal(of, want) {
			t.Fatalf("AppendBodyOf wrote %q, AppendBody of the whole URL %q", of, want)
		}
	})
}

type bodyField struct{ key, value string }

// parseBody reads a flat JSON object with encoding/json, keeping key order
// and numbers as written. A Ruby receiver's JSON.parse keeps the order too
// (a Hash), so this is the value it gets.
func parseBody(b []byte) ([]bodyField, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("want an object, got %v, %v", tok, err)
	}
	var out []bodyField
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, err
		}
		v, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var s string
		switch v := v.(type) {
		case json.Number:
			if n, err := strconv.ParseInt(string(v), 10, 64); err != nil || strconv.FormatInt(n, 10) != string(v) {
				return nil, fmt.Errorf("%v is not an integer in canonical form", v)
			}
			s = string(v)
		case string:
			s = v
		default:
			return nil, fmt.Errorf("%v: unexpected value %T", k, v)
		}
		out = append(out, bodyField{k.(string), s})
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, fmt.Errorf("object not closed: %v, %v", tok, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the object: %v", err)
	}
	return out, nil
}

// goDecoded is s as it reads after a JSON round trip through Go: every
// byte of invalid UTF-8 becomes U+FFFD.
func goDecoded(s string) string { return string([]rune(s)) }

// rubyToJSON re-serialises parsed fields the way Ruby's JSON generator does
// by default (json gem, script_safe and ascii_only off): integers as
// Integer#to_s, strings with only '"', '\\' and control characters below
// U+0020 escaped (\b \f \n \r \t short, the rest as \u00xx in lower-case
// hex), everything else, '/', U+007F, U+2028 and non-ASCII included, as is.
// It is written rune by rune, apart from appendEscaped, on purpose.
func rubyToJSON(fields []bodyField) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(rubyString(f.key))
		b.WriteByte(':')
		if _, err := strconv.ParseInt(f.value, 10, 64); err == nil && (f.key == "object_id" || f.key == "timestamp") {
			b.WriteString(f.value)
		} else {
			b.WriteString(rubyString(f.value))
		}
	}
	b.WriteByte('}')
	return b.String()
}

func rubyString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if r < 0x20 {
				fmt.Fprintf(&b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
