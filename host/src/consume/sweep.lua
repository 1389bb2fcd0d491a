-- Bound the in-flight hash: drop markers whose lease ended before ARGV[2] (runs abandoned
-- long ago whose entries were deleted, so nobody will settle them). Walks the hash with
-- HSCAN from cursor ARGV[1], ARGV[3] fields per call. Returns the next cursor.
-- KEYS: 1 inflight.
local reply = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', tonumber(ARGV[3]))
local items, before = reply[2], tonumber(ARGV[2])
for i = 1, #items, 2 do
  local expiry = marker(items[i + 1])
  if expiry < before then redis.call('HDEL', KEYS[1], items[i]) end
end
return reply[1]
