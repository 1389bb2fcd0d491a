-- The pieces ferry's delivery scripts share, written once (scripts.rs prepends this file to
-- every script, after the constants it generates from the Rust side: `MAX_FIELDS`,
-- `MAX_ENTRY_BYTES`, the `_` metadata names `F.*` (letters.rs `meta`), the event attribute
-- names `A.*` (event.rs `field`) and the failure kind `INVALID_EVENT`). An entry beyond the
-- limits is refused by the dispatcher as `invalid-event`, so no script ever parks it or has
-- to `unpack` it.

-- Decode a netstring list (`len:bytes,` repeated; scripts.rs `netstrings`) into a Lua
-- array: binary-safe, unlike cjson.
local function fields(s)
  local out, i = {}, 1
  while i <= #s do
    local colon = string.find(s, ':', i, true)
    local n = tonumber(string.sub(s, i, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + n)
    i = colon + n + 2
  end
  return out
end

-- Append `s` to `parts` as a netstring (`fields` decodes a concatenation of them).
local function netstring(parts, s)
  parts[#parts + 1] = #s .. ':' .. s .. ','
end

-- A run marker (the inflight hash: event id -> `lease-expiry-ms:starts:owner`,
-- scripts.rs `marker` on the Rust side) parsed into its parts; 0, 0, nil when there is none.
local function marker(v)
  if not v then return 0, 0, nil end
  local expiry, starts, owner = string.match(v, '^(%d+):(%d+):(.*)$')
  if not expiry then return 0, 0, nil end
  return tonumber(expiry), tonumber(starts), owner
end

-- Write the run marker of event `id`.
local function mark(inflight, id, expiry, starts, owner)
  redis.call('HSET', inflight, id, expiry .. ':' .. starts .. ':' .. owner)
end

-- Per-key order. The per-key set is KEYS[1..5] of every script that takes, parks behind or
-- hands on a partition key (read, dispatch, settle; scripts.rs `per_key`): holds (key ->
-- owner), holders (owner -> key), since (key -> ms its hold began), parked_count (counter),
-- parked (the prefix of the lists parked behind a key: a prefix, not a key).
local function per_key()
  return {holds = KEYS[1], holders = KEYS[2], since = KEYS[3], parked_count = KEYS[4], parked = KEYS[5]}
end

-- `owner` holds `pkey` from `now` on (its previous holder's entry in `holders` is the
-- caller's to remove).
local function hold(K, pkey, owner, now)
  redis.call('HSET', K.holds, pkey, owner)
  redis.call('HSET', K.holders, owner, pkey)
  redis.call('ZADD', K.since, now, pkey)
end

-- Take `pkey` for `owner` if it is free: whether it was (false: it has a holder, who may be
-- `owner` itself).
local function take(K, pkey, owner, now)
  if redis.call('HSETNX', K.holds, pkey, owner) == 0 then return false end
  redis.call('HSET', K.holders, owner, pkey)
  redis.call('ZADD', K.since, now, pkey)
  return true
end

-- Park entry `entry` of `stream` behind `pkey`: acked for `group` and stored (netstring
-- fields `stored`, carrying its `_origin`) at the tail of the key's parked list, to be handed
-- the key in its turn (settle.lua `hand_on`).
local function park(K, stream, group, entry, pkey, stored)
  redis.call('XACK', stream, group, entry)
  redis.call('RPUSH', K.parked .. pkey, stored)
  redis.call('INCR', K.parked_count)
end
