-- Keep the runs of this host visibly alive: push the lease of each event it is handling.
-- KEYS: 1 inflight. ARGV: 1 new lease expiry ms, then (event id, owner) pairs.
-- Returns how many leases were pushed.
local n = 0
for i = 2, #ARGV, 2 do
  local _, starts, holder = marker(redis.call('HGET', KEYS[1], ARGV[i]))
  if holder == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. ':' .. starts .. ':' .. holder)
    n = n + 1
  end
end
return n
