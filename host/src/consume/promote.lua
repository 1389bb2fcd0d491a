-- Move due retries from the schedule (sorted by due time) into the subscriber's retry stream.
-- KEYS: 1 schedule, 2 retry stream. ARGV: 1 now ms, 2 max entries to move.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    redis.call('XADD', KEYS[2], '*', unpack(fields(member)))
  end
end
return #due
