-- Record that runs really start: each event's run is charged to its crash budget only now,
-- as its worker begins, not when it was read and queued for a worker (a host that dies with
-- a read's worth of events queued charges only the ones that were running).
-- KEYS: 1 inflight. ARGV: 1 lease expiry ms, then (event id, owner) pairs.
-- Returns one 1/0 per pair: 1 started (the marker is this owner's: run it), 0 not (another
-- delivery of the event holds it, or it is gone: the run must not start).
local out = {}
for i = 2, #ARGV, 2 do
  local _, starts, holder = marker(redis.call('HGET', KEYS[1], ARGV[i]))
  if holder == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. ':' .. (starts + 1) .. ':' .. holder)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
