package shard

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"strconv"

	"github.com/geckohook/geckohook/engine/contract"
)

// bodyForm is the part of a contract body the deliveries of one event name
// and resource path share: the event and the resource URL up to its last
// "/" (the rest is "{object_id}.json").
type bodyForm struct {
	event, urlPrefix string
}

// ref is the form's 8-byte reference (a SHA-256 prefix) under which the
// shard stores it once.
func (f bodyForm) ref() string {
	var buf [128]byte // on the stack for the usual event and URL prefix
	sum := sha256.Sum256(append(append(append(buf[:0], f.event...), 0), f.urlPrefix...))
	return string(sum[:8])
}

func (f bodyForm) value() string { return f.event + "\x00" + f.urlPrefix }

func parseForm(v string) (bodyForm, bool) {
	ev, prefix, ok := bytes.Cut([]byte(v), []byte{0})
	return bodyForm{string(ev), string(prefix)}, ok
}

type wireBody struct {
	ObjectID    *int64  `json:"object_id"`
	Event       *string `json:"event"`
	Timestamp   *int64  `json:"timestamp"`
	ResourceURL *string `json:"resource_url"`
}

// splitBody finds the body form, object id and timestamp of a body with
// the contract's exact shape; false when the body is anything else (it is
// then stored as it is).
func splitBody(body []byte) (f bodyForm, objectID, timestamp int64, ok bool) {
	ev, url, objectID, timestamp, ok := scanBody(body)
	if !ok {
		var w wireBody
		if len(body) == 0 || body[0] != '{' || json.Unmarshal(body, &w) != nil ||
			w.ObjectID == nil || w.Event == nil || w.Timestamp == nil || w.ResourceURL == nil {
			return f, 0, 0, false
		}
		ev, url, objectID, timestamp = *w.Event, *w.ResourceURL, *w.ObjectID, *w.Timestamp
	}
	suffix := "/" + strconv.FormatInt(objectID, 10) + ".json"
	if len(url) < len(suffix) || url[len(url)-len(suffix):] != suffix {
		return f, 0, 0, false
	}
	f = bodyForm{event: ev, urlPrefix: url[:len(url)-len(suffix)]}
	var stack [256]byte
	if !bytes.Equal(f.body(stack[:0], objectID, timestamp), body) {
		return f, 0, 0, false
	}
	return f, objectID, timestamp, true
}

// scanBody reads a body as contract.AppendBody writes it, with no escape
// in its strings (those go through encoding/json instead).
func scanBody(b []byte) (event, url string, objectID, timestamp int64, ok bool) {
	lit := func(s string) bool {
		if !bytes.HasPrefix(b, []byte(s)) {
			return false
		}
		b = b[len(s):]
		return true
	}
	num := func() (int64, bool) {
		i := 0
		if i < len(b) && b[i] == '-' {
			i++
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		n, err := strconv.ParseInt(string(b[:i]), 10, 64)
		b = b[i:]
		return n, err == nil
	}
	str := func() (string, bool) {
		i := bytes.IndexByte(b, '"')
		if i < 0 || bytes.IndexByte(b[:i], '\\') >= 0 {
			return "", false
		}
		v := string(b[:i])
		b = b[i+1:]
		return v, true
	}
	if !lit(`{"object_id":`) {
		return
	}
	if objectID, ok = num(); !ok || !lit(`,"event":"`) {
		return "", "", 0, 0, false
	}
	if event, ok = str(); !ok || !lit(`,"timestamp":`) {
		return "", "", 0, 0, false
	}
	if timestamp, ok = num(); !ok || !lit(`,"resource_url":"`) {
		return "", "", 0, 0, false
	}
	if url, ok = str(); !ok || string(b) != "}" {
		return "", "", 0, 0, false
	}
	return event, url, objectID, timestamp, true
}

// body rebuilds the body of an event of this form, byte for byte, in one
// allocation when dst is nil.
func (f bodyForm) body(dst []byte, objectID, timestamp int64) []byte {
	if dst == nil {
		// The fixed text and two numbers of each up to 20 digits.
		dst = make([]byte, 0, 2*len(f.event)+2*len(f.urlPrefix)+128)
	}
	return contract.AppendBodyOf(dst, f.event, f.urlPrefix, objectID, timestamp)
}
