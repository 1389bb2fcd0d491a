-- Per-key order: claim the partition key of each entry of a batch, in stream order. An entry
-- whose key is held by another event is acked and parked (atomically) behind that key; the
-- holder's final settle moves the next parked event into the retry stream.
-- KEYS: 1 holds hash, 2 parked-list prefix (not a key; for the prefix only)
-- ARGV: 1 group, then per entry: stream key, entry id, partition key, owner, netstring fields
-- Returns one integer per entry: 1 handle it now, 0 parked.
local out = {}
for i = 2, #ARGV, 5 do
  local stream, id, key, owner, f = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local holder = redis.call('HGET', KEYS[1], key)
  if not holder or holder == owner then
    redis.call('HSET', KEYS[1], key, owner)
    out[#out + 1] = 1
  else
    redis.call('XACK', stream, ARGV[1], id)
    redis.call('RPUSH', KEYS[2] .. key, f)
    out[#out + 1] = 0
  end
end
return out
