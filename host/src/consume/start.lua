-- Record that runs really start: each event's run is charged to its crash budget only now,
-- as its worker begins, not when it was read and queued for a worker (a host that dies with
-- a read's worth of events queued charges only the ones that were running).
-- KEYS: 1 inflight. ARGV: 1 lease expiry ms, then (event id, owner) pairs.
-- Returns one 1/0 per pair: 1 started (the marker is this owner's: run it), 0 not (another
-- delivery of the event holds it, or it is gone: the run must not start).
local inflight = KEYS[1]
local expiry, FIRST_RUN = ARGV[1], 2
local out = {}
for i = FIRST_RUN, #ARGV, 2 do
  local id, owner = ARGV[i], ARGV[i + 1]
  local _, starts, holder = marker(redis.call('HGET', inflight, id))
  if holder == owner then
    mark(inflight, id, expiry, starts + 1, holder)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
