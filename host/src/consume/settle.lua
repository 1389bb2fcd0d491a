-- Settle one entry atomically: ack it, then (only if the ack removed it from the pending
-- list) apply its side effect. A replayed or racing settle therefore writes nothing twice.
-- KEYS: 1 stream read from, 2 retry schedule, 3 dead-letter stream, 4 seen set,
--       5.. follow-up streams
-- ARGV: 1 group, 2 entry id, 3 now ms, 4 dedupe window ms, 5 op, then per op:
--   ack:   6 event id to record ('' for none), 7.. one netstring field list per follow-up
--   retry: 6 due ms, 7 netstring fields of the retry entry
--   dlq:   6 netstring fields of the dead-letter entry
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

if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local op = ARGV[5]
if op == 'ack' then
  if ARGV[6] ~= '' and tonumber(ARGV[4]) > 0 then
    redis.call('ZADD', KEYS[4], ARGV[3], ARGV[6])
  end
  for i = 7, #ARGV do
    redis.call('XADD', KEYS[5 + i - 7], '*', unpack(fields(ARGV[i])))
  end
elseif op == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[7])
elseif op == 'dlq' then
  redis.call('XADD', KEYS[3], '*', unpack(fields(ARGV[6])))
end
return 1
