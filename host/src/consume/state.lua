-- Handler state (plugin::state, issue 25), prepended to settle.lua and to
-- plugin/state_commit.lua (scripts.rs, plugin/state.rs): one hash per (stream, subscriber)
-- in the stream's slot (its field names `S.*` generated from keys.rs `state_field`), field
-- `=KEY` the value, `#KEY` its version (bumped by every write, deletes too, never
-- reset), `_bytes` the total of keys and values stored. A commit's arguments `a` (from
-- `Txn::commit_args`): 1 quota bytes (0: none), 2 reads n, then n × (key, version seen), then
-- writes m, then m × (key, op `s` set | `d` delete, value or "").
--
-- A commit costs one HMGET (every version read, every written key's value and version) to
-- check, and one HSET (or HDEL + HSET) per written key to apply: the check's findings are
-- kept in a plan the apply reads, so nothing is asked twice, and `_bytes` is read and
-- written once per script call (`state_total`, the caller's running total), not per commit.

-- How many fields one HMGET asks for at most (Lua's `unpack` has a stack limit).
local STATE_CHUNK = 1000

-- The values of `names` in `state` (false where there is none), in chunks of STATE_CHUNK.
local function state_fields(state, names)
  local out = {}
  for from = 1, #names, STATE_CHUNK do
    local got = redis.call('HMGET', state, unpack(names, from, math.min(from + STATE_CHUNK - 1, #names)))
    for i = 1, #got do out[#out + 1] = got[i] end
  end
  return out
end

-- The bytes `state` stores now (the quota's total).
local function state_total(state)
  return tonumber(redis.call('HGET', state, S.BYTES) or '0')
end

-- Check commit `a` against `state`, whose total is `total` bytes: nil and a refusal
-- ({0, KEY}: a key read changed meanwhile; {-1, TOTAL}: the quota would be exceeded), or
-- the plan `state_apply` follows (each write's version before it, and the change of the
-- total). It writes nothing, so the settle can check before its XACK and apply after it.
local function state_plan(state, a, total)
  local quota, reads = tonumber(a[1]), tonumber(a[2])
  local at = 3 + 2 * reads
  local writes = tonumber(a[at])
  local names = {}
  for i = 0, reads - 1 do names[#names + 1] = S.VERSION .. a[3 + 2 * i] end
  for i = 0, writes - 1 do
    local key = a[at + 1 + 3 * i]
    names[#names + 1] = S.VALUE .. key
    names[#names + 1] = S.VERSION .. key
  end
  if #names == 0 then return nil, {versions = {}, delta = 0} end
  local got = state_fields(state, names)
  for i = 0, reads - 1 do
    if (got[i + 1] or '0') ~= a[4 + 2 * i] then return {0, a[3 + 2 * i]} end
  end
  local delta, versions = 0, {}
  for i = 0, writes - 1 do
    local key, op, value = a[at + 1 + 3 * i], a[at + 2 + 3 * i], a[at + 3 + 3 * i]
    local old = got[reads + 2 * i + 1]
    versions[i + 1] = tonumber(got[reads + 2 * i + 2] or '0')
    local had = old ~= false and old ~= nil
    local old_len = had and #old or 0
    if op == 's' then
      delta = delta + #value - old_len + (had and 0 or #key)
    elseif had then
      delta = delta - old_len - #key
    end
  end
  if quota > 0 and delta > 0 and total + delta > quota then return {-1, total} end
  return nil, {versions = versions, delta = delta}
end

-- Apply commit `a` as `plan` (from `state_plan`, just before) says: each write, its version
-- bumped. The caller adds `plan.delta` to `_bytes` (once per script call).
local function state_apply(state, a, plan)
  local at = 3 + 2 * tonumber(a[2])
  local writes = tonumber(a[at])
  for i = 0, writes - 1 do
    local key, op, value = a[at + 1 + 3 * i], a[at + 2 + 3 * i], a[at + 3 + 3 * i]
    local version = plan.versions[i + 1] + 1
    if op == 's' then
      redis.call('HSET', state, S.VALUE .. key, value, S.VERSION .. key, version)
    else
      redis.call('HDEL', state, S.VALUE .. key)
      redis.call('HSET', state, S.VERSION .. key, version)
    end
  end
end

-- Add `delta` bytes to the total of `state`.
local function state_count(state, delta)
  if delta ~= 0 then redis.call('HINCRBY', state, S.BYTES, delta) end
end
