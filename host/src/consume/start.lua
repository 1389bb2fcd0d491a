-- Record that runs really start: each event's run is charged to its crash budget only now,
-- as its worker begins, not when it was read and queued for a worker (a host that dies with
-- a read's worth of events queued charges only the ones that were running).
-- A run may also ask for one key of the subscriber's state (its event's partition key, for a
-- subscriber granted state): its value and version are read here, in one HMGET for the whole
-- call, so the handler's first read of that key needs no round trip of its own. The settle
-- checks that version like any read (state.lua), so reading early changes no guarantee.
-- KEYS: 1 inflight, 2 the subscriber's state hash (in the stream's slot).
-- ARGV: 1 lease expiry ms, then (event id, owner, state key or '') triples.
-- Returns one reply per triple: 1 started (the marker is this owner's: run it), 0 not
-- (another delivery of the event holds it, or it is gone: the run must not start); a started
-- run that asked for a key gets {1, value or false, version or false} instead of 1.
local inflight, state = KEYS[1], KEYS[2]
local expiry, FIRST_RUN = ARGV[1], 2
local out, names, asked = {}, {}, {}
for i = FIRST_RUN, #ARGV, 3 do
  local id, owner, key = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local _, starts, holder = marker(redis.call('HGET', inflight, id))
  if holder == owner then
    mark(inflight, id, expiry, starts + 1, holder)
    out[#out + 1] = 1
    if key ~= '' then
      asked[#asked + 1] = #out
      names[#names + 1] = S.VALUE .. key
      names[#names + 1] = S.VERSION .. key
    end
  else
    out[#out + 1] = 0
  end
end
if #names > 0 then
  -- No state stored yet (or a key of another type, which the settle refuses): nothing to read.
  local got = redis.call('TYPE', state)['ok'] == 'hash' and state_fields(state, names) or {}
  for j = 1, #asked do
    out[asked[j]] = {1, got[2 * j - 1] or false, got[2 * j] or false}
  end
end
return out
