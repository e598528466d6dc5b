package shard

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The id index: tag:i:<xx> hashes, packed delivery id -> webhook and
// offset, so a delivery is found by id and scheduled only if absent.

// indexValue is what the id index says of a scheduled delivery: its
// webhook (12 bytes for an id of the registry's "wh_" and 24 hex digits)
// and its offset (for a member search restricted to it).
func indexValue(rec *Record) string {
	var b []byte
	if h := rec.WebhookID; len(h) == 27 && h[:3] == "wh_" {
		if raw, err := hex.DecodeString(h[3:]); err == nil && hex.EncodeToString(raw) == h[3:] {
			b = append(append(b, 0), raw...)
		}
	}
	if b == nil {
		b = appendString([]byte{1}, rec.WebhookID)
	}
	return string(binary.AppendVarint(b, rec.Offset))
}

// parseIndexValue reads an indexValue.
func parseIndexValue(v string) (hook string, offset int64, ok bool) {
	r := memberReader{b: []byte(v)}
	switch {
	case len(v) > 0 && v[0] == 0:
		r.b = r.b[1:]
		hook = "wh_" + hex.EncodeToString(r.bytes(12))
	case len(v) > 0 && v[0] == 1:
		r.b = r.b[1:]
		hook = r.string()
	default:
		return "", 0, false
	}
	offset = r.varint()
	return hook, offset, r.err == nil && len(r.b) == 0
}

// Get reads a scheduled record and its due time (for inspection and tests).
func (q *Queue) Get(ctx context.Context, id string) (*Record, time.Time, error) {
	pid := packedID(id)
	ix, err := q.rdb.HGet(ctx, q.indexKey(pid), pid).Result()
	if errors.Is(err, redis.Nil) {
		return nil, time.Time{}, fmt.Errorf("delivery %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot look delivery %s up: %w", id, err)
	}
	return q.getIndexed(ctx, id, ix)
}

// getIndexed finds the member of delivery id in the ZSET of the webhook
// its index value ix names, searching only members of its offset first,
// then (for a Redis whose MATCH reads patterns as UTF-8, like the
// embedded one) all of them.
func (q *Queue) getIndexed(ctx context.Context, id, ix string) (*Record, time.Time, error) {
	hook, offset, ok := parseIndexValue(ix)
	if !ok {
		return nil, time.Time{}, fmt.Errorf("cannot read delivery %s: malformed index entry", id)
	}
	meta, err := q.rdb.HGet(ctx, q.metaKey, hook).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, time.Time{}, fmt.Errorf("cannot read delivery %s: %w", id, err)
	}
	for _, pattern := range []string{memberPattern(offset), ""} {
		rec, at, err := q.scanFor(ctx, id, hook, parseMeta(meta), pattern)
		if !errors.Is(err, ErrNotFound) {
			return rec, at, err
		}
	}
	return nil, time.Time{}, fmt.Errorf("delivery %s: %w", id, ErrNotFound)
}

// scanFor finds delivery id among the members of hook's ZSET that match
// pattern.
func (q *Queue) scanFor(ctx context.Context, id, hook string, meta hookMeta, pattern string) (*Record, time.Time, error) {
	var cursor uint64
	for {
		members, next, err := q.rdb.ZScan(ctx, q.HookKey(hook), cursor, pattern, 1000).Result()
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("cannot read delivery %s: %w", id, err)
		}
		for i := 0; i+1 < len(members); i += 2 {
			rec, err := q.decode(ctx, members[i], hook, meta)
			if err != nil || rec.ID != id {
				continue
			}
			score, err := strconv.ParseFloat(members[i+1], 64)
			if err != nil {
				return nil, time.Time{}, fmt.Errorf("cannot read the due time of delivery %s: %w", id, err)
			}
			return rec, time.UnixMilli(int64(score)), nil
		}
		if cursor = next; cursor == 0 {
			return nil, time.Time{}, fmt.Errorf("delivery %s: %w", id, ErrNotFound)
		}
	}
}
