-- Handler state (plugin::state, issue 25), prepended to settle.lua and to
-- plugin/state_commit.lua (scripts.rs, plugin/state.rs): one hash per (stream, subscriber)
-- in the stream's slot (its field names `S.*` generated from keys.rs `state_field`), field
-- `=KEY` the value, `#KEY` its version (bumped by every write, deletes too, never
-- reset), `_bytes` the total of keys and values stored. A commit's arguments `a` (from
-- `Txn::commit_args`): 1 quota bytes (0: none), 2 reads n, then n × (key, version seen), then
-- writes m, then m × (key, op `s` set | `d` delete, value or "").
-- state_check: nil when every key read is still at the version seen and the quota holds;
-- else {0, KEY} (a key read changed meanwhile) or {-1, TOTAL} (the quota would be exceeded).
-- It writes nothing, so the settle can check before its XACK and apply after it.
local function state_check(state, a)
  local quota, reads = tonumber(a[1]), tonumber(a[2])
  local at = 3
  for i = 0, reads - 1 do
    local key, seen = a[at + 2 * i], a[at + 2 * i + 1]
    if (redis.call('HGET', state, S.VERSION .. key) or '0') ~= seen then return {0, key} end
  end
  at = at + 2 * reads
  local writes = tonumber(a[at]); at = at + 1
  local delta = 0
  for i = 0, writes - 1 do
    local key, op, value = a[at + 3 * i], a[at + 3 * i + 1], a[at + 3 * i + 2]
    local old = redis.call('HSTRLEN', state, S.VALUE .. key)
    local had = redis.call('HEXISTS', state, S.VALUE .. key) == 1
    if op == 's' then
      delta = delta + #value - old + (had and 0 or #key)
    elseif had then
      delta = delta - old - #key
    end
  end
  local total = tonumber(redis.call('HGET', state, S.BYTES) or '0')
  if quota > 0 and delta > 0 and total + delta > quota then return {-1, total} end
  return nil
end

-- Apply a checked commit: each write, its version bumped, the total kept.
local function state_apply(state, a)
  local at = 3 + 2 * tonumber(a[2])
  local writes = tonumber(a[at]); at = at + 1
  local delta = 0
  for i = 0, writes - 1 do
    local key, op, value = a[at + 3 * i], a[at + 3 * i + 1], a[at + 3 * i + 2]
    local old = redis.call('HSTRLEN', state, S.VALUE .. key)
    local had = redis.call('HEXISTS', state, S.VALUE .. key) == 1
    if op == 's' then
      delta = delta + #value - old + (had and 0 or #key)
      redis.call('HSET', state, S.VALUE .. key, value)
    elseif had then
      delta = delta - old - #key
      redis.call('HDEL', state, S.VALUE .. key)
    end
    redis.call('HINCRBY', state, S.VERSION .. key, 1)
  end
  if delta ~= 0 then redis.call('HINCRBY', state, S.BYTES, delta) end
end
