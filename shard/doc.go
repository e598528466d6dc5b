// Package shard owns the per-partition state of a dispatcher: which Kafka
// offset may be committed (the lowest event with an unfinished delivery),
// the bounded window of in-flight deliveries, and the shard's retry queue in
// Redis (gh:{topic-partition}:q:<webhook>:<n> chunks and their companions,
// docs/retries.md).
package shard
