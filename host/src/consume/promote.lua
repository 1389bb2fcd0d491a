-- Move due retries from the schedule (sorted by due time) into the subscriber's retry stream.
-- KEYS: 1 schedule, 2 retry stream. ARGV: 1 now ms, 2 max entries to move.
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

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', unpack(fields(member)))
  redis.call('ZREM', KEYS[1], member)
end
return #due
