package registry

// This file decodes webhook records in bulk for a full load: each record's
// strings are copied into one string per batch (the batch's webhooks share
// it), and the strings many webhooks repeat (application ids, events,
// hosts) are kept once. A record the fast reader does not understand is
// decoded by msgpack itself, so every record msgpack writes still loads.

import (
	"encoding/binary"
	"strings"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// batchDecoder turns a page of raw webhook records into webhooks; one per
// decoding goroutine.
type batchDecoder struct {
	// interned keeps one copy of each application id, event and host.
	interned map[string]string
	buf, tmp []byte
}

func newBatchDecoder() *batchDecoder {
	return &batchDecoder{interned: make(map[string]string)}
}

func (d *batchDecoder) intern(s string) string {
	if v, ok := d.interned[s]; ok {
		return v
	}
	s = strings.Clone(s)
	d.interned[s] = s
	return s
}

// span is a string of a record, as offsets into the batch's buffer.
type span struct{ from, to int32 }

// pending is a webhook whose own strings still point into the buffer.
type pending struct {
	id, account, address span
	decoded              bool // by msgpack: the strings are the webhook's own
}

// decode decodes raw records into webhooks (one allocation for all of
// them, one for their strings) and returns them with the records it
// could not read, by index into raws.
func (d *batchDecoder) decode(raws []string) (hooks []Webhook, bad []int) {
	hooks = make([]Webhook, len(raws))
	spans := make([]pending, len(raws))
	d.buf = d.buf[:0]
	n := 0
	for i, raw := range raws {
		w, p := &hooks[n], &spans[n]
		*w, *p = Webhook{}, pending{} // the slot of an unreadable record is reused
		if d.readRecord(raw, w, p) {
			n++
			continue
		}
		// Not the layout msgpack writes for a Webhook today: let msgpack
		// read it.
		*w, p.decoded = Webhook{}, true
		if err := msgpack.Unmarshal([]byte(raw), w); err != nil {
			bad = append(bad, i)
			continue
		}
		w.prepare()
		n++
	}
	hooks = hooks[:n:n]
	all := string(d.buf)
	at := func(s span) string { return all[s.from:s.to] }
	for i := range hooks {
		w, p := &hooks[i], &spans[i]
		if p.decoded {
			continue
		}
		w.ID, w.AccountID, w.Address = at(p.id), at(p.account), at(p.address)
		w.host = d.hostOf(w.Address)
	}
	return hooks, bad
}

// hostOf is Webhook.prepare's host for the common address forms, without
// parsing a URL: an address whose authority names its port gives a
// substring of itself, one with the scheme's default port an interned
// string. Anything unusual takes prepare's path.
func (d *batchDecoder) hostOf(address string) string {
	var rest, port string
	switch {
	case strings.HasPrefix(address, "https://"):
		rest, port = address[len("https://"):], "443"
	case strings.HasPrefix(address, "http://"):
		rest, port = address[len("http://"):], "80"
	default:
		return slowHost(address)
	}
	for i := 0; i < len(rest); i++ {
		if c := rest[i]; c <= ' ' || c >= 0x7f || c == '%' { // url.Parse may refuse it
			return slowHost(address)
		}
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	auth := rest[:end]
	colon := -1
	for i := 0; i < len(auth); i++ {
		switch c := auth[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '-':
		case c == ':' && colon < 0:
			colon = i
		default: // upper case, userinfo, IPv6 brackets, escapes, ...
			return slowHost(address)
		}
	}
	switch {
	case auth == "" || colon == 0 || colon == len(auth)-1:
		return slowHost(address)
	case colon < 0:
		d.tmp = append(append(append(d.tmp[:0], auth...), ':'), port...)
		if v, ok := d.interned[string(d.tmp)]; ok {
			return v
		}
		return d.intern(string(d.tmp))
	}
	for i := colon + 1; i < len(auth); i++ {
		if auth[i] < '0' || auth[i] > '9' {
			return slowHost(address)
		}
	}
	return auth
}

func slowHost(address string) string {
	w := Webhook{Address: address}
	w.prepare()
	return w.host
}

// readRecord reads the record msgpack writes for a Webhook: a map of
// string keys to strings and one timestamp. It reports false for anything
// else.
func (d *batchDecoder) readRecord(raw string, w *Webhook, p *pending) bool {
	r := mpReader{b: raw}
	n, ok := r.mapLen()
	if !ok {
		return false
	}
	for ; n > 0; n-- {
		key, ok := r.str()
		if !ok {
			return false
		}
		if key == "created_at" {
			if w.CreatedAt, ok = r.time(); !ok {
				return false
			}
			continue
		}
		val, ok := r.str()
		if !ok {
			return false
		}
		switch key {
		case "id":
			p.id = d.keep(val)
		case "account_id":
			p.account = d.keep(val)
		case "address":
			p.address = d.keep(val)
		case "app_id":
			w.AppID = d.intern(val)
		case "event":
			w.Event = d.intern(val)
		default:
			return false
		}
	}
	return r.i == len(r.b)
}

// keep copies s into the batch's buffer.
func (d *batchDecoder) keep(s string) span {
	from := int32(len(d.buf))
	d.buf = append(d.buf, s...)
	return span{from, int32(len(d.buf))}
}

// mpReader reads the few msgpack forms a webhook record uses.
type mpReader struct {
	b string
	i int
}

func (r *mpReader) next(n int) (string, bool) {
	if n < 0 || len(r.b)-r.i < n {
		return "", false
	}
	s := r.b[r.i : r.i+n]
	r.i += n
	return s, true
}

func (r *mpReader) byte() (byte, bool) {
	s, ok := r.next(1)
	if !ok {
		return 0, false
	}
	return s[0], true
}

func (r *mpReader) mapLen() (int, bool) {
	c, ok := r.byte()
	switch {
	case !ok:
		return 0, false
	case c >= 0x80 && c <= 0x8f:
		return int(c & 0x0f), true
	case c == 0xde:
		s, ok := r.next(2)
		if !ok {
			return 0, false
		}
		return int(binary.BigEndian.Uint16([]byte(s))), true
	}
	return 0, false
}

func (r *mpReader) str() (string, bool) {
	c, ok := r.byte()
	if !ok {
		return "", false
	}
	var n int
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n = int(c & 0x1f)
	case c == 0xd9:
		s, ok := r.next(1)
		if !ok {
			return "", false
		}
		n = int(s[0])
	case c == 0xda:
		s, ok := r.next(2)
		if !ok {
			return "", false
		}
		n = int(binary.BigEndian.Uint16([]byte(s)))
	default:
		return "", false
	}
	return r.next(n)
}

// time reads a msgpack timestamp (extension -1) the way msgpack does:
// time.Unix of its seconds and nanoseconds.
func (r *mpReader) time() (time.Time, bool) {
	c, ok := r.byte()
	if !ok {
		return time.Time{}, false
	}
	var n int
	switch c {
	case 0xd6:
		n = 4
	case 0xd7:
		n = 8
	case 0xc7:
		l, ok := r.byte()
		if !ok || l != 12 {
			return time.Time{}, false
		}
		n = 12
	default:
		return time.Time{}, false
	}
	if typ, ok := r.byte(); !ok || typ != 0xff {
		return time.Time{}, false
	}
	s, ok := r.next(n)
	if !ok {
		return time.Time{}, false
	}
	b := []byte(s)
	var tm time.Time
	switch n {
	case 4:
		tm = time.Unix(int64(binary.BigEndian.Uint32(b)), 0)
	case 8:
		v := binary.BigEndian.Uint64(b)
		tm = time.Unix(int64(v&0x3ffffffff), int64(v>>34))
	default:
		tm = time.Unix(int64(binary.BigEndian.Uint64(b[4:])), int64(binary.BigEndian.Uint32(b[:4])))
	}
	if tm.IsZero() {
		tm = tm.UTC()
	}
	return tm, true
}
