-- Read new entries for one consumer (`>` on the source and the retry stream; no BLOCK:
-- scripts cannot block) and, under per-key order, give each source entry its place in its
-- partition key's queue at the moment it is delivered, in stream order. A free key is taken
-- for the entry (it runs when dispatched); a held key gets the entry parked behind it at once
-- (acked, stored in the key's parked list, handed the key and moved to the retry stream in
-- its turn).
-- Taking the place at delivery rather than at dispatch keeps a key's events in stream order
-- when several hosts read one group: an event one host has read but not yet dispatched (or
-- never will: it was killed) can no longer be overtaken by a later event of its key that
-- another host read after it.
-- KEYS: 1-5 the per-key set (prelude `per_key`), 6 source stream, 7 retry stream
-- ARGV: 1 group, 2 consumer, 3 count, 4 now ms
-- Returns {entries per stream as XREADGROUP returns them, without the parked ones; last id
-- of the source; last id of the retry stream}; the last ids only when nothing was read, so
-- the caller can wait for more with XREAD BLOCK from there.
local K = per_key()
local source, retry = KEYS[6], KEYS[7]
local group, consumer, count, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
  'STREAMS', source, retry, '>', '>')
if not reply then
  local last = {}
  for i, stream in ipairs({source, retry}) do
    local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    last[i] = top[1] and top[1][1] or '0-0'
  end
  return {{}, last[1], last[2]}
end

-- The partition key of fields `f` if the dispatcher will accept the entry; an entry it
-- refuses (too many fields or bytes, a field twice) takes no key and is never parked: it is
-- delivered as it is, dead-lettered as `invalid-event`, and its key's next event flows.
local function partition_key(f)
  if #f > 2 * MAX_FIELDS then return nil end
  local pkey, names, bytes = nil, {}, 0
  for i = 1, #f, 2 do
    if names[f[i]] then return nil end
    names[f[i]] = true
    bytes = bytes + #f[i] + #f[i + 1]
    if f[i] == A.PARTITIONKEY then pkey = f[i + 1] end
  end
  if bytes > MAX_ENTRY_BYTES then return nil end
  return pkey
end

local out = {}
for _, s in ipairs(reply) do
  local stream, entries = s[1], s[2]
  if stream == source then
    local kept = {}
    for _, e in ipairs(entries) do
      local id, f = e[1], e[2]
      local pkey = partition_key(f)
      local parked = false
      if pkey and pkey ~= '' then
        local owner = stream .. '/' .. id
        if not take(K, pkey, owner, now) then
          -- Stored as a parked event is at dispatch (dispatch.lua), marked `_parked` so the
          -- dispatcher still asks whether the subscriber wants it when it comes back.
          local parts = {}
          for i = 1, #f, 2 do
            if string.sub(f[i], 1, #F.PREFIX) ~= F.PREFIX then
              netstring(parts, f[i])
              netstring(parts, f[i + 1])
            end
          end
          for _, v in ipairs({F.ATTEMPT, '1', F.ORIGIN, owner, F.PARKED, '1'}) do netstring(parts, v) end
          park(K, stream, group, id, pkey, table.concat(parts))
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
