-- Move due retries from the schedule (sorted by due time) into the subscriber's retry stream.
-- KEYS: 1 schedule, 2 retry stream. ARGV: 1 now ms, 2 max entries to move.
-- Returns how many were due (each moved once: by this call or by a racing one).
local schedule, retry = KEYS[1], KEYS[2]
local now, limit = ARGV[1], tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', schedule, '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  if redis.call('ZREM', schedule, member) == 1 then
    redis.call('XADD', retry, '*', unpack(fields(member)))
  end
end
return #due
