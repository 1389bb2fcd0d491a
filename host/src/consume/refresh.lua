-- Keep the runs of this host visibly alive: push the lease of each event it is handling.
-- KEYS: 1 inflight. ARGV: 1 new lease expiry ms, then (event id, owner) pairs.
-- Returns how many leases were pushed.
local inflight = KEYS[1]
local expiry, FIRST_RUN = ARGV[1], 2
local n = 0
for i = FIRST_RUN, #ARGV, 2 do
  local id, owner = ARGV[i], ARGV[i + 1]
  local _, starts, holder = marker(redis.call('HGET', inflight, id))
  if holder == owner then
    mark(inflight, id, expiry, starts, holder)
    n = n + 1
  end
end
return n
