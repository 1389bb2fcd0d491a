-- Read new entries for one consumer (`>` on the source and the retry stream; no BLOCK:
-- scripts cannot block) and, under per-key order, give each source entry its place in its
-- partition key's queue at the moment it is delivered, in stream order. A free key is taken
-- for the entry (it runs when dispatched); a held key gets the entry parked behind it at once
-- (acked, stored in the key's parked list, released to the retry stream in its turn).
-- Taking the place at delivery rather than at dispatch keeps a key's events in stream order
-- when several hosts read one group: an event one host has read but not yet dispatched (or
-- never will: it was killed) can no longer be overtaken by a later event of its key that
-- another host read after it.
-- KEYS: 1 source stream, 2 retry stream, 3 holds, 4 holders, 5 hold since, 6 parked count,
--       7 parked-list prefix (a prefix, not a key)
-- ARGV: 1 group, 2 consumer, 3 count, 4 now ms, 5 name of the partition key field
-- Returns {entries per stream as XREADGROUP returns them, without the parked ones; last id
-- of the source; last id of the retry stream}; the last ids only when nothing was read, so
-- the caller can wait for more with XREAD BLOCK from there.
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], KEYS[2], '>', '>')
if not reply then
  local last = {}
  for i = 1, 2 do
    local top = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
    last[i] = top[1] and top[1][1] or '0-0'
  end
  return {{}, last[1], last[2]}
end

local function netstring(parts, s)
  parts[#parts + 1] = #s .. ':' .. s .. ','
end

local out = {}
for _, s in ipairs(reply) do
  local stream, entries = s[1], s[2]
  if stream == KEYS[1] then
    local kept = {}
    for _, e in ipairs(entries) do
      local id, f = e[1], e[2]
      -- An entry the dispatcher refuses (too many fields or bytes, a field twice) takes no
      -- key and is never parked: it is delivered as it is, dead-lettered as `invalid-event`,
      -- and its key's next event flows.
      local pkey, valid = nil, #f <= 2 * MAX_FIELDS
      if valid then
        local names, bytes = {}, 0
        for i = 1, #f, 2 do
          if names[f[i]] then valid = false end
          names[f[i]] = true
          bytes = bytes + #f[i] + #f[i + 1]
          if f[i] == ARGV[5] then pkey = f[i + 1] end
        end
        valid = valid and bytes <= MAX_ENTRY_BYTES
      end
      local parked = false
      if valid and pkey and pkey ~= '' then
        local owner = stream .. '/' .. id
        if redis.call('HSETNX', KEYS[3], pkey, owner) == 1 then
          redis.call('HSET', KEYS[4], owner, pkey)
          redis.call('ZADD', KEYS[5], ARGV[4], pkey)
        else
          -- Stored as a parked event is at dispatch (dispatch.lua), marked `_parked` so the
          -- dispatcher still asks whether the subscriber wants it when it comes back.
          local parts = {}
          for i = 1, #f, 2 do
            if string.sub(f[i], 1, 1) ~= '_' then
              netstring(parts, f[i])
              netstring(parts, f[i + 1])
            end
          end
          for _, v in ipairs({'_attempt', '1', '_origin', owner, '_parked', '1'}) do netstring(parts, v) end
          redis.call('XACK', stream, ARGV[1], id)
          redis.call('RPUSH', KEYS[7] .. pkey, table.concat(parts))
          redis.call('INCR', KEYS[6])
          parked = true
        end
      end
      if not parked then kept[#kept + 1] = e end
    end
    out[#out + 1] = {stream, kept}
  else
    out[#out + 1] = s
  end
end
return {out, '', ''}
