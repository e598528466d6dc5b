package shard

import (
	"strconv"

	"github.com/redis/go-redis/v9"
)

// A webhook's scheduled deliveries are split into chunks: sorted sets
// tag:q:<webhook>:<n> of at most chunkSize members each, so every one
// stays in Redis's compact listpack encoding (zset-max-listpack-entries
// is 128 by default) however deep the webhook's queue grows. The chunk
// index tag:chunks scores each chunk "<webhook>:<n>" by its earliest due
// time (never later: a claim corrects it), the webhook index tag:qh
// scores each webhook with chunks by the earliest of them (never later
// either; a claim reads it too, so a webhook whose due chunks fill what a
// claim reads of tag:chunks never crowds the others out), tag:qn holds per webhook the
// chunk being filled, how many chunks it has and the highest chunk
// number in use since it had none ("<n> <count> <highest>"), and the id
// index records each delivery's chunk, where it stays until it leaves
// the queue (a reschedule or a lease replaces its member in place). Once
// the chunk being filled is full, the next is the first free number after
// it modulo 2 × count + 2: chunks mostly empty in the order they filled,
// so that is usually the next one, and numbers stay below twice the most
// chunks the webhook had at once (a listing or count reads each number).
// Should a state ever count fewer chunks than exist (it was lost), the
// search goes on past the modulus instead of looping in Redis.

// chunkSize is the most members a chunk holds.
const chunkSize = 128

// A process of the version before chunks drops a shard's body forms when
// its webhook index, tag:hooks, is empty, which it is once that layout is
// migrated: every chunk member would then refer to a form the shard no
// longer has. So the scripts that place members keep a mark in tag:hooks:
// the member "" (no webhook's id) scored at markScore (year 144,683), so
// an old claim never finds it due and its poller waits its usual second.
const markScore = 1 << 52

// chunkLua is the part of every script that places members in chunks or
// takes them out; it needs the local tag (the key tag) set before it.
// place(hook, member, score) adds a member to the webhook's chunk being
// filled (a new one once that holds chunkSize) and returns its number
// (the chunk index learns its earliest due time in saveStates, as it
// does for any chunk given to lower(hook, c, score), and tag:qh the
// webhook's); target
// and add are its two halves, for a script that writes the index entry,
// which names the chunk, only if absent before it adds the member;
// readStates(hooks) reads the states of several webhooks in one call
// (state(hook) reads one it lacks on its own).
// removed(hook, c) is called after a member left chunk c: an empty chunk
// leaves the chunk index, and a webhook left without chunks loses its
// state and, unless the layout before chunks still holds some of its
// deliveries, its metadata. saveStates() writes the states back (and,
// after a placement, the mark in tag:hooks); a script that placed or
// removed calls it once at its end.
// earliest(hook, chunks, k, max) returns the k earliest members scored at
// most max of the webhook's chunks, given as {c, min} in order of their
// earliest due time, as {m, s, sv, c} in order of score, reading only
// the chunks that may hold one of them (it stops at a chunk whose
// earliest due time is past the k-th found), of each only the members
// earlier than the k-th found, and marking those it read looked; it
// sorts what it found once it holds 2k, not once per chunk, since a
// backlog whose due times interleave has it read about one chunk per
// member it returns. hookChunks(hook) lists a webhook's chunks that way.
var chunkLua = `
local chunkSize = ` + strconv.Itoa(chunkSize) + `
local function qkey(hook, c) return tag .. ':q:' .. hook .. ':' .. c end
local states, firsts, hookFirsts, placedAny = {}, {}, {}, false
local function parseState(v)
  local s = {t = 0, l = 0, hi = 0}
  if v then
    local t, l, hi = string.match(v, '^(%d+) (%d+) (%d+)$')
    s.t, s.l, s.hi = tonumber(t) or 0, tonumber(l) or 0, tonumber(hi) or 0
  end
  return s
end
local function state(hook)
  local s = states[hook]
  if s then return s end
  s = parseState(redis.call('HGET', tag .. ':qn', hook))
  states[hook] = s
  return s
end
local function readStates(hooks)
  if #hooks == 0 then return end
  local vs = redis.call('HMGET', tag .. ':qn', unpack(hooks))
  for k, hook in ipairs(hooks) do
    if not states[hook] then states[hook] = parseState(vs[k] or nil) end
  end
end
local function saveStates()
  if placedAny then redis.call('ZADD', tag .. ':hooks', 'NX', ` + strconv.Itoa(markScore) + `, '') end
  for chunk, score in pairs(firsts) do redis.call('ZADD', tag .. ':chunks', 'LT', score, chunk) end
  for hook, score in pairs(hookFirsts) do redis.call('ZADD', tag .. ':qh', 'LT', score, hook) end
  for hook, s in pairs(states) do
    if s.dirty then
      if s.l > 0 then
        redis.call('HSET', tag .. ':qn', hook, s.t .. ' ' .. s.l .. ' ' .. s.hi)
      else
        redis.call('HDEL', tag .. ':qn', hook)
        redis.call('ZREM', tag .. ':qh', hook)
        if redis.call('EXISTS', tag .. ':q:' .. hook) == 0 then redis.call('HDEL', tag .. ':hm', hook) end
      end
    end
  end
end
local function target(hook)
  local s = state(hook)
  if not s.n then s.n = redis.call('ZCARD', qkey(hook, s.t)) end
  if s.n >= chunkSize then
    local m = 2 * s.l + 2
    local c = (s.t + 1) % m
    for _ = 1, m do
      if redis.call('EXISTS', qkey(hook, c)) == 0 then break end
      c = (c + 1) % m
    end
    while redis.call('EXISTS', qkey(hook, c)) == 1 do c = c + 1 end
    s.t, s.n, s.dirty = c, 0, true
    if c > s.hi then s.hi = c end
  end
  return s.t
end
local function lower(hook, c, score)
  local chunk, v = hook .. ':' .. c, tonumber(score)
  if not firsts[chunk] or v < firsts[chunk] then firsts[chunk] = v end
  if not hookFirsts[hook] or v < hookFirsts[hook] then hookFirsts[hook] = v end
end
local function add(hook, member, score)
  local s = state(hook)
  if s.n == 0 then s.l = s.l + 1 end
  redis.call('ZADD', qkey(hook, s.t), score, member)
  s.n, s.dirty, placedAny = s.n + 1, true, true
  lower(hook, s.t, score)
end
local function place(hook, member, score)
  local c = target(hook)
  add(hook, member, score)
  return c
end
local function removed(hook, c)
  if redis.call('EXISTS', qkey(hook, c)) == 1 then
    local s = states[hook] -- one not read yet knows no count to forget
    if s and tonumber(c) == s.t then s.n = nil end
    return
  end
  redis.call('ZREM', tag .. ':chunks', hook .. ':' .. c)
  firsts[hook .. ':' .. c] = nil
  local s = state(hook)
  s.l, s.dirty = s.l - 1, true
  if tonumber(c) == s.t then s.n = 0 end
end
local function splitChunk(name)
  return string.match(name, '^(.*):(%d+)$')
end
local function earliest(hook, chunks, k, max)
  -- One chunk's members come in order: cand needs sorting only once a
  -- second chunk added some, and cutting again only after an addition.
  local cand, kth, sources, added = {}, nil, 0, false
  local function cut()
    if sources > 1 then
      table.sort(cand, function(a, b) return a.s < b.s or (a.s == b.s and a.m < b.m) end)
    end
    for j = #cand, k + 1, -1 do cand[j] = nil end
    if #cand >= k then kth = cand[k] end
    added = false
  end
  for _, ch in ipairs(chunks) do
    local upto = max
    if kth then
      if ch.min >= kth.s then break end
      upto = '(' .. kth.sv
    end
    local ms = redis.call('ZRANGEBYSCORE', qkey(hook, ch.c), '-inf', upto, 'WITHSCORES', 'LIMIT', 0, k)
    if #ms > 0 then sources, added = sources + 1, true end
    for b = 1, #ms, 2 do
      cand[#cand+1] = {m = ms[b], s = tonumber(ms[b+1]), sv = ms[b+1], c = ch.c}
    end
    ch.looked = true
    if #cand >= 2 * k or (not kth and #cand >= k) then cut() end
  end
  if added then cut() end
  return cand
end
local function hookChunks(hook)
  local s, chunks = state(hook), {}
  if s.l == 0 then return chunks end
  for from = 0, s.hi, 500 do
    local names = {}
    for c = from, math.min(from + 499, s.hi) do names[#names+1] = hook .. ':' .. c end
    local mins = redis.call('ZMSCORE', tag .. ':chunks', unpack(names))
    for k = 1, #names do
      if mins[k] then chunks[#chunks+1] = {c = from + k - 1, min = tonumber(mins[k])} end
    end
  end
  table.sort(chunks, function(a, b) return a.min < b.min end)
  return chunks
end
`

// chunkKey is the sorted set of a webhook's chunk c.
func (q *Queue) chunkKey(hook, c string) string { return q.tag + ":q:" + hook + ":" + c }

// listScript returns up to ARGV[3] of webhook ARGV[2]'s scheduled
// deliveries, earliest due first, as (chunk, member, score) triples;
// ARGV[1] is the key tag.
var listScript = redis.NewScript(`
local tag, hook = ARGV[1], ARGV[2]
` + chunkLua + `
local out = {}
for _, x in ipairs(earliest(hook, hookChunks(hook), tonumber(ARGV[3]), '+inf')) do
  out[#out+1] = tostring(x.c)
  out[#out+1] = x.m
  out[#out+1] = x.sv
end
return out
`)

// hookLenScript counts webhook ARGV[2]'s scheduled deliveries; ARGV[1]
// is the key tag.
var hookLenScript = redis.NewScript(`
local tag, hook = ARGV[1], ARGV[2]
` + chunkLua + `
local s, n = state(hook), 0
if s.l == 0 then return 0 end
for c = 0, s.hi do n = n + redis.call('ZCARD', qkey(hook, c)) end
return n
`)
