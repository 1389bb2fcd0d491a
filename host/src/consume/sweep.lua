-- Bound the in-flight hash: drop markers whose lease ended before a time (runs abandoned
-- long ago whose entries were deleted, so nobody will settle them). Walks the hash with
-- HSCAN, a bounded number of fields per call.
-- KEYS: 1 inflight. ARGV: 1 cursor, 2 lease ends before this ms: dropped, 3 fields per call.
-- Returns the next cursor ('0': the walk is done).
local inflight = KEYS[1]
local cursor, before, per_call = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local reply = redis.call('HSCAN', inflight, cursor, 'COUNT', per_call)
local items = reply[2]
for i = 1, #items, 2 do
  local expiry = marker(items[i + 1])
  if expiry < before then redis.call('HDEL', inflight, items[i]) end
end
return reply[1]
