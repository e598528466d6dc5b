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

// The id index: tag:i:<xx> hashes, packed delivery id -> webhook, offset
// and chunk, so a delivery is found by id and scheduled only if absent.

// Index value kinds: the first byte says how the webhook is written, and
// whether the chunk follows the offset (the layout before chunks, kept
// until its queue is migrated, had none).
const (
	ixHexHook      = 0 // "wh_" and 24 hex digits, as 12 bytes; no chunk
	ixStringHook   = 1 // any other webhook id, as a string; no chunk
	ixHexChunk     = 2 // as ixHexHook, then the chunk in decimal
	ixStringChunk  = 3 // as ixStringHook, then the chunk in decimal
	ixChunkedFirst = ixHexChunk
)

// indexValue is what the id index says of a scheduled delivery but its
// chunk, which the scripts append when they place it: its webhook (12
// bytes for an id of the registry's "wh_" and 24 hex digits) and its
// offset (for a member search restricted to it).
func indexValue(rec *Record) string {
	var b []byte
	if h := rec.WebhookID; len(h) == 27 && h[:3] == "wh_" {
		if raw, err := hex.DecodeString(h[3:]); err == nil && hex.EncodeToString(raw) == h[3:] {
			b = append(append(b, ixHexChunk), raw...)
		}
	}
	if b == nil {
		b = appendString([]byte{ixStringChunk}, rec.WebhookID)
	}
	return string(binary.AppendVarint(b, rec.Offset))
}

// parseIndexValue reads an index value; chunk is "" for one written
// before chunks.
func parseIndexValue(v string) (hook string, offset int64, chunk string, ok bool) {
	if v == "" {
		return "", 0, "", false
	}
	r := memberReader{b: []byte(v[1:])}
	switch v[0] {
	case ixHexHook, ixHexChunk:
		hook = "wh_" + hex.EncodeToString(r.bytes(12))
	case ixStringHook, ixStringChunk:
		hook = r.string()
	default:
		return "", 0, "", false
	}
	offset = r.varint()
	if r.err != nil {
		return "", 0, "", false
	}
	if v[0] < ixChunkedFirst {
		return hook, offset, "", len(r.b) == 0
	}
	chunk = string(r.b)
	if _, err := strconv.ParseUint(chunk, 10, 31); err != nil {
		return "", 0, "", false
	}
	return hook, offset, chunk, true
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

// getIndexed finds the member of delivery id in the chunk its index
// value ix names (or the webhook's sorted set of the layout before
// chunks), searching only members of its offset first, then (for a Redis
// whose MATCH reads patterns as UTF-8, like the embedded one) all of them.
func (q *Queue) getIndexed(ctx context.Context, id, ix string) (*Record, time.Time, error) {
	hook, offset, chunk, ok := parseIndexValue(ix)
	if !ok {
		return nil, time.Time{}, fmt.Errorf("cannot read delivery %s: malformed index entry", id)
	}
	meta, err := q.rdb.HGet(ctx, q.metaKey, hook).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, time.Time{}, fmt.Errorf("cannot read delivery %s: %w", id, err)
	}
	for _, pattern := range []string{memberPattern(offset), ""} {
		key := q.oldHookKey(hook)
		if chunk != "" {
			key = q.chunkKey(hook, chunk)
		}
		rec, at, err := q.scanFor(ctx, id, key, hook, parseMeta(meta), pattern)
		if err == nil {
			rec.chunk = chunk
		}
		if !errors.Is(err, ErrNotFound) {
			return rec, at, err
		}
	}
	return nil, time.Time{}, fmt.Errorf("delivery %s: %w", id, ErrNotFound)
}

// scanFor finds delivery id among the members of key, a sorted set of
// hook's deliveries, that match pattern.
func (q *Queue) scanFor(ctx context.Context, id, key, hook string, meta hookMeta, pattern string) (*Record, time.Time, error) {
	var cursor uint64
	for {
		members, next, err := q.rdb.ZScan(ctx, key, cursor, pattern, 1000).Result()
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
