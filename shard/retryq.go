package shard

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// Record is one delivery waiting for a retry (or dead), stored msgpack-encoded
// in the shard's hash. It holds everything a re-send needs except the address
// and secret, which are looked up in the registry at send time.
type Record struct {
	ID           string    `msgpack:"id"` // X-Gecko-Delivery
	WebhookID    string    `msgpack:"webhook_id"`
	AppID        string    `msgpack:"app_id"`
	AccountID    string    `msgpack:"account_id"`
	Event        string    `msgpack:"event"`
	Body         []byte    `msgpack:"body"`
	Attempts     int       `msgpack:"attempts"` // attempts made so far (1 after the first failure)
	FirstAttempt time.Time `msgpack:"first_attempt"`
	LastAttempt  time.Time `msgpack:"last_attempt"`
	LastStatus   int       `msgpack:"last_status"`
	LastError    string    `msgpack:"last_error"`
	Topic        string    `msgpack:"topic"`
	Partition    int32     `msgpack:"partition"`
	Offset       int64     `msgpack:"offset"`
}

// Entry is a record to store with its due time; Dead entries go to the dead
// set instead (no retries left).
type Entry struct {
	Rec  *Record
	Due  time.Time
	Dead bool
}

// Queue is one shard's retry queue in Redis. Every key shares the hash tag
// {topic-partition}, so scripts and transactions never cross Redis Cluster
// slots.
type Queue struct {
	rdb      redis.UniversalClient
	DueKey   string // ZSET delivery id -> due time (ms)
	DataKey  string // HASH delivery id -> msgpack Record
	DeadKey  string // ZSET delivery id -> time it died (ms)
	DeadData string // HASH delivery id -> msgpack Record
}

// NewQueue returns the queue of topic's partition.
func NewQueue(rdb redis.UniversalClient, prefix, topic string, partition int) *Queue {
	tag := prefix + "{" + topic + "-" + strconv.Itoa(partition) + "}"
	return &Queue{rdb: rdb, DueKey: tag + ":due", DataKey: tag + ":d", DeadKey: tag + ":dead", DeadData: tag + ":dead:d"}
}

// Schedule stores entries in one pipelined round trip. It is an insert if
// absent: a delivery replayed after a crash keeps the record (attempt count,
// due time) it already has, so a replay never creates a second record.
func (q *Queue) Schedule(ctx context.Context, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range entries {
			raw, err := msgpack.Marshal(e.Rec)
			if err != nil {
				return fmt.Errorf("cannot encode delivery %s: %w", e.Rec.ID, err)
			}
			dataKey, zsetKey := q.DataKey, q.DueKey
			if e.Dead {
				dataKey, zsetKey = q.DeadData, q.DeadKey
			}
			p.HSetNX(ctx, dataKey, e.Rec.ID, raw)
			p.ZAddNX(ctx, zsetKey, redis.Z{Score: float64(e.Due.UnixMilli()), Member: e.Rec.ID})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot schedule %d deliveries in %s: %w", len(entries), q.DueKey, err)
	}
	return nil
}

// Get reads a scheduled record and its due time (for inspection and tests).
func (q *Queue) Get(ctx context.Context, id string) (*Record, time.Time, error) {
	return q.get(ctx, q.DataKey, q.DueKey, id)
}

// GetDead reads a dead record and when it died.
func (q *Queue) GetDead(ctx context.Context, id string) (*Record, time.Time, error) {
	return q.get(ctx, q.DeadData, q.DeadKey, id)
}

func (q *Queue) get(ctx context.Context, dataKey, zsetKey, id string) (*Record, time.Time, error) {
	raw, err := q.rdb.HGet(ctx, dataKey, id).Bytes()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot read delivery %s: %w", id, err)
	}
	score, err := q.rdb.ZScore(ctx, zsetKey, id).Result()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot read due time of delivery %s: %w", id, err)
	}
	rec := new(Record)
	if err := msgpack.Unmarshal(raw, rec); err != nil {
		return nil, time.Time{}, fmt.Errorf("cannot decode delivery %s: %w", id, err)
	}
	return rec, time.UnixMilli(int64(score)), nil
}

// Len returns how many deliveries are scheduled.
func (q *Queue) Len(ctx context.Context) (int64, error) {
	return q.rdb.ZCard(ctx, q.DueKey).Result()
}
