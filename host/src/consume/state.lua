-- Handler state (plugin::state, issue 25), prepended to settle.lua, acks.lua, start.lua and
-- plugin/state_commit.lua (scripts.rs, plugin/state.rs): one hash per (stream, subscriber)
-- in the stream's slot (its field names `S.*` generated from keys.rs `state_field`), field
-- `=KEY` the value, `#KEY` its version (bumped by every write, deletes too, never
-- reset), `_bytes` the total of keys and values stored. A commit's arguments (from
-- `Txn::commit_args`) are read in place, `a[o + 1]` on (the settle's ARGV, where they sit
-- inside an entry, is not copied): 1 quota bytes (0: none), 2 reads n, then n × (key, version
-- seen), then writes m, then the change of the total that the checked writes make, then
-- m × (key, op `s` set | `d` delete, value or "", next version or "").
--
-- A checked write is one of a key the event read: once the read's version is found current,
-- the host knew the committed value then, so it sends the write's next version and its share
-- of the total's change, and the script looks nothing up for it. A blind write (a key the
-- event did not read; next version "") is looked up: its value (for the total) and version.
--
-- A script call reads the hash once and writes it once, however many commits it holds: the
-- fields every commit needs are read in one HMGET (`state_read`) into a table `known`, which
-- each applied commit updates, so a later commit of the same call sees the earlier ones'
-- writes; the writes wait in `pending` and go out in one HSET and one HDEL (`state_write`).
-- `_bytes` is read and written once per call too (`state_total`, `state_count`).

-- How many fields one HMGET, HSET or HDEL carries at most (Lua's `unpack` has a stack limit).
local STATE_CHUNK = 1000

-- Run `command` on `key` with the values of `list` in chunks of at most `per` values (a
-- multiple of the pair size, for HSET and ZADD); the replies, in order, concatenated.
local function chunked(command, key, list, per)
  local out = {}
  for from = 1, #list, per do
    local got = redis.call(command, key, unpack(list, from, math.min(from + per - 1, #list)))
    if type(got) == 'table' then
      for i = 1, #got do out[#out + 1] = got[i] end
    end
  end
  return out
end

-- The values of `names` in `state` (false where there is none), in order.
local function state_fields(state, names)
  return chunked('HMGET', state, names, STATE_CHUNK)
end

-- The bytes `state` stores now (the quota's total).
local function state_total(state)
  return tonumber(redis.call('HGET', state, S.BYTES) or '0')
end

-- The fields commit `a`, `o` needs: every version read, and the value and version of every
-- key written blindly.
local function state_names(a, o, names)
  local reads = tonumber(a[o + 2])
  local at = o + 3 + 2 * reads
  for i = 0, reads - 1 do names[#names + 1] = S.VERSION .. a[o + 3 + 2 * i] end
  for i = 0, tonumber(a[at]) - 1 do
    if a[at + 5 + 4 * i] == '' then
      local key = a[at + 2 + 4 * i]
      names[#names + 1] = S.VALUE .. key
      names[#names + 1] = S.VERSION .. key
    end
  end
  return names
end

-- The fields the commits of a settle's entries need (`ackst` entries of ARGV from index `i`
-- on, laid out as settle.lua's header says; settle.lua and acks.lua share it).
local function settle_names(i)
  local names = {}
  while i <= #ARGV do
    -- An entry's values are ARGV[i + 1] on; an ackst's commit is its 9th value on.
    if ARGV[i + 1] == 'ackst' then state_names(ARGV, i + 8, names) end
    i = i + tonumber(ARGV[i]) + 1
  end
  return names
end

-- Read into `known` the fields of `names` it does not hold yet, in one HMGET.
local function state_read(state, names, known)
  local missing, seen = {}, {}
  for i = 1, #names do
    local n = names[i]
    if known[n] == nil and not seen[n] then
      seen[n] = true
      missing[#missing + 1] = n
    end
  end
  if #missing == 0 then return end
  local got = state_fields(state, missing)
  for i = 1, #missing do known[missing[i]] = got[i] or false end
end

-- Check commit `a`, `o` against the fields `known` holds (read by `state_read`, updated by the
-- commits applied before it), the state's total being `total` bytes: nil and a refusal
-- ({0, KEY}: a key read changed meanwhile; {-1, TOTAL}: the quota would be exceeded), or
-- the plan `state_apply` follows (each write's next version, and the change of the total).
-- It writes nothing, so the settle can check before its XACK and apply after it.
local function state_plan(a, o, total, known)
  local quota, reads = tonumber(a[o + 1]), tonumber(a[o + 2])
  local at = o + 3 + 2 * reads
  local writes = tonumber(a[at])
  for i = 0, reads - 1 do
    local key = a[o + 3 + 2 * i]
    if (known[S.VERSION .. key] or '0') ~= a[o + 4 + 2 * i] then return {0, key} end
  end
  -- The checked writes' change, sent; the blind ones' worked out from what is stored.
  local delta, versions = tonumber(a[at + 1]), {}
  for i = 0, writes - 1 do
    local w = at + 2 + 4 * i
    local key, op, value, next_version = a[w], a[w + 1], a[w + 2], a[w + 3]
    if next_version ~= '' then
      versions[i + 1] = next_version
    else
      local old = known[S.VALUE .. key]
      versions[i + 1] = tostring(tonumber(known[S.VERSION .. key] or '0') + 1)
      local had = old ~= false and old ~= nil
      local old_len = had and #old or 0
      if op == 's' then
        delta = delta + #value - old_len + (had and 0 or #key)
      elseif had then
        delta = delta - old_len - #key
      end
    end
  end
  if quota > 0 and delta > 0 and total + delta > quota then return {-1, total} end
  return nil, {versions = versions, delta = delta}
end

-- Apply commit `a`, `o` as `plan` (from `state_plan`, just before) says: each write, at its
-- next version, into `known` (for the call's later commits) and `pending` (field → value,
-- false: delete), which `state_write` sends. The caller adds `plan.delta` to `_bytes` (once
-- per script call).
local function state_apply(a, o, plan, known, pending)
  local at = o + 3 + 2 * tonumber(a[o + 2])
  for i = 0, tonumber(a[at]) - 1 do
    local w = at + 2 + 4 * i
    local key, value = a[w], a[w + 1] == 's' and a[w + 2] or false
    local version = plan.versions[i + 1]
    local field, vfield = S.VALUE .. key, S.VERSION .. key
    known[field], pending[field] = value, value
    known[vfield], pending[vfield] = version, version
  end
end

-- Write `pending` (from `state_apply`) to `state`: one HSET of the values and versions set,
-- one HDEL of the values deleted. Returns an empty table for the next writes.
local function state_write(state, pending)
  local set, del = {}, {}
  for field, value in pairs(pending) do
    if value then
      set[#set + 1] = field
      set[#set + 1] = value
    else
      del[#del + 1] = field
    end
  end
  if #set > 0 then chunked('HSET', state, set, STATE_CHUNK) end
  if #del > 0 then chunked('HDEL', state, del, STATE_CHUNK) end
  return {}
end

-- Add `delta` bytes to the total of `state`.
local function state_count(state, delta)
  if delta ~= 0 then redis.call('HINCRBY', state, S.BYTES, delta) end
end
