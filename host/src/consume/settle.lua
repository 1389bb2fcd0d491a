-- Settle one entry atomically: ack it, then (only if the ack removed it from the pending
-- list) apply its side effect and, under per-key order, hand the partition key on. A replayed
-- or racing settle therefore writes nothing twice.
-- KEYS: 1 stream read from, 2 retry schedule, 3 dead-letter stream, 4 seen set, 5 holds hash,
--       6 parked list of the partition key, 7 retry stream, 8.. follow-up streams
-- ARGV: 1 group, 2 entry id, 3 now ms, 4 dedupe window ms, 5 partition key to release ('' for
--       none), 6 owner of the hold, 7 op, then per op:
--   ack:   8 event id to record ('' for none), 9.. one netstring field list per follow-up
--   retry: 8 due ms, 9 netstring fields of the retry entry
--   dlq:   8 netstring fields of the dead-letter entry
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local op = ARGV[7]
if op == 'ack' then
  if ARGV[8] ~= '' and tonumber(ARGV[4]) > 0 then
    redis.call('ZADD', KEYS[4], ARGV[3], ARGV[8])
  end
  for i = 9, #ARGV do
    redis.call('XADD', KEYS[8 + i - 9], '*', unpack(fields(ARGV[i])))
  end
elseif op == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[9])
elseif op == 'dlq' then
  redis.call('XADD', KEYS[3], '*', unpack(fields(ARGV[8])))
end
-- Per-key order: the event is done (handled or dead-lettered), so the next event parked
-- behind its partition key goes to the retry stream and takes the hold over.
if ARGV[5] ~= '' and op ~= 'retry' and redis.call('HGET', KEYS[5], ARGV[5]) == ARGV[6] then
  local nxt = redis.call('LPOP', KEYS[6])
  if nxt then
    local f = fields(nxt)
    local owner = ''
    for i = 1, #f, 2 do
      if f[i] == '_origin' then owner = f[i + 1] end
    end
    redis.call('XADD', KEYS[7], '*', unpack(f))
    redis.call('HSET', KEYS[5], ARGV[5], owner)
  else
    redis.call('HDEL', KEYS[5], ARGV[5])
  end
end
return 1
