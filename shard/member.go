package shard

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/geckohook/geckohook/engine/contract"
)

// A scheduled delivery is one member of its webhook's ZSET: the record in
// a compact binary form (memberVersion, flags, then varints and
// length-prefixed strings). Everything the shard, the webhook or the event
// already says is left out and put back on decode:
//   - the delivery id when it is the one contract.DeliveryID derives from
//     the shard, the offset and the webhook (always, for geckohook's own);
//   - the webhook (the ZSET's key), its application and account (the
//     shard's hook metadata, one entry per webhook);
//   - the topic and partition (the shard);
//   - the body, when it has the contract's shape: its event and resource
//     URL without the trailing /{object_id}.json are one body form, stored
//     once per shard under an 8-byte reference, and the member keeps the
//     reference, the object id and the timestamp (in seconds after the
//     first attempt's);
//   - the last error when it is "HTTP <status>"; the pieces of others that
//     recur (phrases) take a byte each.
const memberVersion = 1

const (
	fRawID        = 1 << iota // the id is stored: it is not the derived one
	fRawBody                  // the body is stored as it is
	fRawEvent                 // the event is stored: it differs from the body form's
	fRetryAfter               // Record.RetryAfter
	fLastError                // the last error is stored: it is not "HTTP <status>"
	fFirstAttempt             // FirstAttempt is set
	fLastAttempt              // LastAttempt is set
	fPackedError              // the stored last error is shortened by phrases
)

// packedID is the index field of a delivery id: the 16 bytes of a UUID in
// lowercase text form, any other id as it is.
func packedID(id string) string {
	if len(id) != contract.DeliveryIDLen || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' {
		return id
	}
	var b [16]byte
	for k, p := range uuidHexAt {
		hi, ok1 := lowerHex(id[p])
		lo, ok2 := lowerHex(id[p+1])
		if !ok1 || !ok2 {
			return id
		}
		b[k] = hi<<4 | lo
	}
	return string(b[:])
}

// uuidHexAt is where each byte's two hex digits start in a UUID's text.
var uuidHexAt = [16]int{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

func lowerHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// indexBucket is the id index bucket of a packed id: its first byte, so
// each of a shard's 256 index hashes stays small enough for Redis's
// compact encoding up to about 30,000 scheduled deliveries per shard.
func indexBucket(packed string) string {
	if packed == "" {
		return "00"
	}
	return bucketNames[packed[0]]
}

// bucketArg is indexBucket as a script argument, boxed once for all: a
// batch names a bucket per delivery.
func bucketArg(packed string) any {
	if packed == "" {
		return bucketArgs[0]
	}
	return bucketArgs[packed[0]]
}

var bucketNames, bucketArgs = func() (names [256]string, args [256]any) {
	for i := range names {
		names[i] = hex.EncodeToString([]byte{byte(i)})
		args[i] = names[i]
	}
	return names, args
}()

// packing remembers what decoding a member found, so writing the record
// back skips deriving its id and splitting its body again.
type packing struct {
	id, hook  string
	offset    int64
	derived   bool
	body      []byte // the Body the tail was decoded into
	tail      []byte // body form reference, object id, timestamp
	base      int64  // the timestamp's base in tail
	formEvent string
}

// idDerived reports whether rec's id is the one DeliveryID derives.
func (q *Queue) idDerived(rec *Record) bool {
	if c := rec.packed; c != nil && c.id == rec.ID && c.hook == rec.WebhookID && c.offset == rec.Offset {
		return c.derived
	}
	return rec.ID == contract.DeliveryID(q.topic, int32(q.partition), rec.Offset, rec.WebhookID)
}

// bodyTail returns the encoded form reference, object id and timestamp of
// rec's body and the form's event; ok is false for a body stored as it is.
// form is the body form when it was split here (nil when reused).
func bodyTail(rec *Record) (tail []byte, event string, form *bodyForm, ok bool) {
	base := timestampBase(rec)
	if c := rec.packed; c != nil && c.body != nil && c.base == base && len(c.body) == len(rec.Body) && len(c.body) > 0 && &c.body[0] == &rec.Body[0] {
		return c.tail, c.formEvent, nil, true
	}
	f, objectID, timestamp, ok := splitBody(rec.Body)
	if !ok {
		return nil, "", nil, false
	}
	tail = append([]byte(f.ref()), binary.AppendVarint(nil, objectID)...)
	return binary.AppendVarint(tail, timestamp-base), f.event, &f, true
}

// timestampBase is what a member stores the event's timestamp relative to:
// the first attempt's Unix second, which it is usually close to.
func timestampBase(rec *Record) int64 {
	if rec.FirstAttempt.IsZero() {
		return 0
	}
	return rec.FirstAttempt.Unix()
}

// memberOf encodes rec as its ZSET member, and returns the body form it
// refers to when it split the body (nil when the body is stored as it is
// or was read with its form).
func (q *Queue) memberOf(rec *Record) (member string, form *bodyForm) {
	b := make([]byte, 0, 64)
	b = append(b, memberVersion, 0)
	var flags byte
	if !q.idDerived(rec) {
		flags |= fRawID
	}
	tail, formEvent, form, ok := bodyTail(rec)
	if !ok {
		flags |= fRawBody
	}
	if !ok || rec.Event != formEvent {
		flags |= fRawEvent
	}
	if rec.RetryAfter {
		flags |= fRetryAfter
	}
	if rec.LastError != httpError(rec.LastStatus) {
		flags |= fLastError
	}
	if !rec.FirstAttempt.IsZero() {
		flags |= fFirstAttempt
	}
	if !rec.LastAttempt.IsZero() {
		flags |= fLastAttempt
	}
	b[1] = flags
	b = appendOffset(b, rec.Offset)
	b = binary.AppendUvarint(b, uint64(rec.Attempts))
	b = binary.AppendUvarint(b, uint64(rec.Retries))
	b = binary.AppendUvarint(b, uint64(rec.Deferrals))
	b = binary.AppendUvarint(b, uint64(rec.LastStatus))
	first := rec.FirstAttempt.UnixMilli()
	if flags&fFirstAttempt != 0 {
		b = binary.AppendVarint(b, first)
	} else {
		first = 0
	}
	if flags&fLastAttempt != 0 {
		b = binary.AppendVarint(b, rec.LastAttempt.UnixMilli()-first)
	}
	if flags&fRawID != 0 {
		b = appendString(b, rec.ID)
	}
	// formSweepScript (migrate.go) finds the body form reference here,
	// after everything above: a field added before it goes there too.
	if flags&fRawBody != 0 {
		b = appendString(b, string(rec.Body))
	} else {
		b = append(b, tail...)
	}
	if flags&fRawEvent != 0 {
		b = appendString(b, rec.Event)
	}
	if flags&fLastError != 0 {
		e := rec.LastError
		if packed, ok := packError(e); ok {
			b[1] |= fPackedError
			e = packed
		}
		b = appendString(b, e)
	}
	return string(b), form
}

func httpError(status int) string {
	if status == 0 {
		return ""
	}
	return "HTTP " + strconv.Itoa(status)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

var (
	errBadMember   = errors.New("malformed retry record")
	errUnknownForm = errors.New("retry record refers to an unknown body form")
)

// unreadable reports whether a decoding error is the member's own (it
// never decodes; Quarantine) rather than Redis failing to answer.
func unreadable(err error) bool {
	return errors.Is(err, errBadMember) || errors.Is(err, errUnknownForm)
}

// readOnly returns the bytes of s without copying them: a claim decodes
// hundreds of members, and a reader only reads. Nothing may write to them.
func readOnly(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// memberReader reads a member's fields in order; the first error sticks.
type memberReader struct {
	b   []byte
	err error
}

func (r *memberReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errBadMember
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *memberReader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errBadMember
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *memberReader) bytes(n uint64) []byte {
	if r.err != nil || uint64(len(r.b)) < n {
		r.err = errBadMember
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *memberReader) string() string { return string(r.bytes(r.uvarint())) }

// readHead reads a member of hook's ZSET up to its body: the flags, offset,
// counts, attempt times and delivery id; nil when it is not a member of
// this version. A read past the end sticks in r.err.
func (q *Queue) readHead(member, hook string) (rec *Record, flags byte, r memberReader) {
	if len(member) < 2 || member[0] != memberVersion {
		return nil, 0, r
	}
	flags = member[1]
	r.b = readOnly(member[2:])
	rec = &Record{WebhookID: hook, Topic: q.topic, Partition: int32(q.partition), member: member}
	rec.Offset = r.offset()
	rec.Attempts = int(r.uvarint())
	rec.Retries = int(r.uvarint())
	rec.Deferrals = int(r.uvarint())
	rec.LastStatus = int(r.uvarint())
	var first int64
	if flags&fFirstAttempt != 0 {
		first = r.varint()
		rec.FirstAttempt = time.UnixMilli(first).UTC()
	}
	if flags&fLastAttempt != 0 {
		rec.LastAttempt = time.UnixMilli(first + r.varint()).UTC()
	}
	if flags&fRawID != 0 {
		rec.ID = r.string()
	} else {
		rec.ID = contract.DeliveryID(q.topic, int32(q.partition), rec.Offset, hook)
	}
	return rec, flags, r
}

// decodeMember rebuilds the record of a member of hook's ZSET; forms looks
// a body form up by reference and meta gives the webhook's application
// and account.
func (q *Queue) decodeMember(member, hook string, forms func(ref string) (bodyForm, bool), meta hookMeta) (*Record, error) {
	rec, flags, r := q.readHead(member, hook)
	if rec == nil {
		return nil, errBadMember
	}
	rec.AppID, rec.AccountID = meta.app, meta.account
	c := &packing{hook: hook, offset: rec.Offset, derived: flags&fRawID == 0}
	c.id = rec.ID
	if flags&fRawBody != 0 {
		rec.Body = bytes.Clone(r.bytes(r.uvarint()))
	} else {
		start := r.b
		ref := string(r.bytes(8))
		objectID, timestamp := r.varint(), r.varint()
		if r.err != nil {
			return nil, r.err
		}
		f, ok := forms(ref)
		if !ok {
			return nil, errUnknownForm
		}
		base := timestampBase(rec)
		rec.Body, rec.Event = f.body(nil, objectID, base+timestamp), f.event
		c.body, c.tail, c.base, c.formEvent = rec.Body, start[:len(start)-len(r.b)], base, f.event
	}
	rec.packed = c
	if flags&fRawEvent != 0 {
		rec.Event = r.string()
	}
	rec.RetryAfter = flags&fRetryAfter != 0
	if flags&fLastError != 0 {
		rec.LastError = r.string()
		if flags&fPackedError != 0 {
			rec.LastError = unpackError(rec.LastError)
		}
	} else {
		rec.LastError = httpError(rec.LastStatus)
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, errBadMember
	}
	return rec, nil
}

// hookMeta is what the shard keeps once per webhook: its application and
// account.
type hookMeta struct{ app, account string }

func (m hookMeta) value() string { return m.app + "\x00" + m.account }

func parseMeta(v string) hookMeta {
	app, account, _ := strings.Cut(v, "\x00")
	return hookMeta{app, account}
}

// appendOffset writes an offset as the member's first field in ASCII
// bytes only: a count of 7-bit groups, then the groups of its zigzag
// form, most significant first. A pattern for it is then exact on
// redis-server and valid UTF-8 for the embedded Redis of `make run`,
// which compiles MATCH patterns as Go regexps.
func appendOffset(b []byte, offset int64) []byte {
	u := uint64(offset<<1) ^ uint64(offset>>63)
	n := 1
	for v := u >> 7; v != 0; v >>= 7 {
		n++
	}
	b = append(b, byte(n))
	for i := n - 1; i >= 0; i-- {
		b = append(b, byte(u>>(7*i))&0x7f)
	}
	return b
}

func (r *memberReader) offset() int64 {
	if r.err != nil || len(r.b) == 0 || r.b[0] < 1 || r.b[0] > 10 || len(r.b) < 1+int(r.b[0]) {
		r.err = errBadMember
		return 0
	}
	n := int(r.b[0])
	var u uint64
	for _, c := range r.b[1 : 1+n] {
		u = u<<7 | uint64(c&0x7f)
	}
	r.b = r.b[1+n:]
	return int64(u>>1) ^ -int64(u&1)
}

// memberPattern is a ZSCAN MATCH pattern for the members of one offset:
// the version, any flags, the offset, anything after.
func memberPattern(offset int64) string {
	b := []byte{memberVersion, '?'}
	for _, c := range appendOffset(nil, offset) {
		switch c {
		case '*', '?', '[', ']', '\\':
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return string(append(b, '*'))
}

// phrases are the pieces of the sender's error texts that recur: a
// member's last error stores each as one byte (its index + 1, below 0x20,
// which no error text holds; a text that holds one is stored as it is).
// The list is part of the member format: only ever append to it.
var phrases = []string{
	"connection: the receiver closed the connection without answering after the request was sent",
	"connection: dial tcp: lookup ",
	": connect: connection refused",
	"connection: dial tcp ",
	"timeout: no answer within ",
	": fasthttp: timeout",
	"connection reset by peer",
	": no such host",
	": i/o timeout",
	"no_free_connection: ",
	"refused_target: ",
	"timeout: ",
	"connection: ",
	"fasthttp: ",
	"tls: failed to verify certificate: x509: ",
	"certificate ",
	// The dispatcher's deferral without an attempt (engine/dispatch).
	"host_saturated: host is not keeping up; deferred to the retry queue without an attempt",
}

var (
	phraseOnce    sync.Once
	phraseEncoder *strings.Replacer
)

func initPhrases() {
	var enc []string
	for i, p := range phrases {
		enc = append(enc, p, string(rune(i+1)))
	}
	phraseEncoder = strings.NewReplacer(enc...)
}

// packError shortens an error text by its phrases; false when the text
// holds a control byte (stored as it is).
func packError(s string) (string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 {
			return s, false
		}
	}
	phraseOnce.Do(initPhrases)
	return phraseEncoder.Replace(s), true
}

// unpackError puts each phrase back for its byte, in one allocation: a
// claim unpacks the last error of most members it takes.
func unpackError(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 1 && int(c) <= len(phrases) {
			n += len(phrases[c-1])
		} else {
			n++
		}
	}
	if n == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(n)
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 1 && int(c) <= len(phrases) {
			b.WriteString(phrases[c-1])
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}
