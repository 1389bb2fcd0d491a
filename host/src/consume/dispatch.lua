-- Decide, atomically with recording it, what happens to each event of a read that the
-- precheck (a MULTI of native commands, see dispatch.rs) could not decide: handle it now, ack
-- it as a duplicate, let it wait for another delivery of the same event to settle,
-- dead-letter it (crash budget spent), or park it behind its partition key.
-- KEYS: 1-5 the per-key set (prelude `per_key`), 6 seen, 7 dead, 8 inflight
-- ARGV: 1 group, 2 now ms, 3 dedupe window ms (0: off), 4 lease ms, 5 max deliveries,
--       6 ordered ('1'/'0'), then 8 values per event: stream key, entry id, event id,
--       owner, replay ('1'/'0'), partition key ('' for none), netstring fields to park,
--       the run marker the precheck wrote for it ('' for none)
-- A marker the precheck wrote is this read's own guess, not a run: it counts as absent, and
-- is removed unless the decision is to run.
-- Returns one decision per event: run, dup, dead, wait, crash or park; run, dup and dead with
-- an `h` when the event holds its partition key (its settle must hand the key on).
local K = per_key()
local seen, dead, inflight = KEYS[6], KEYS[7], KEYS[8]
local group, now, window, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local max_deliveries, ordered = tonumber(ARGV[5]), ARGV[6] == '1'
local FIRST_EVENT, PER_EVENT = 7, 8

-- Holds exist only under per-key order (or left from it): skip the lookups when none do.
local any_holds = redis.call('HLEN', K.holds) > 0
local cutoff = now - window
local out = {}
for i = FIRST_EVENT, #ARGV, PER_EVENT do
  local stream, entry, id, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local replay, pkey, parked, guess = ARGV[i + 4] == '1', ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  local decision
  local current = redis.call('HGET', inflight, id)
  local guessed = guess ~= '' and current == guess
  if guessed then current = nil end
  local expiry, starts, holder = marker(current)
  if window > 0 then
    local handled = redis.call('ZSCORE', seen, id)
    if handled and tonumber(handled) >= cutoff then
      decision = 'dup'
    elseif not replay then
      local lettered = redis.call('ZSCORE', dead, id)
      if lettered and tonumber(lettered) >= cutoff then decision = 'dead' end
    end
    if not decision and holder and holder ~= owner and expiry > now then decision = 'wait' end
  end
  -- A duplicate may be the holder of its key (a parked copy moved to the retry stream after
  -- the other copy was handled): it must hand the key on, or the key stays held forever.
  if (decision == 'dup' or decision == 'dead') and any_holds and redis.call('HEXISTS', K.holders, owner) == 1 then
    decision = decision .. 'h'
  end
  if not decision and starts >= max_deliveries then decision = 'crash' end
  local holds = false
  if not decision and ordered and pkey ~= '' then
    if not take(K, pkey, owner, now) and redis.call('HGET', K.holds, pkey) ~= owner then
      park(K, stream, group, entry, pkey, parked)
      decision = 'park'
    else
      holds = true
    end
  end
  if not decision then
    -- A holder from before `ordered` was turned off still hands its key on.
    if not holds and any_holds and redis.call('HEXISTS', K.holders, owner) == 1 then holds = true end
    -- Leased, not yet started: the run is charged to the crash budget when a worker
    -- really starts it (start.lua), so events that wait for a worker are never charged.
    mark(inflight, id, now + lease, starts, owner)
    decision = holds and 'runh' or 'run'
  elseif guessed then
    redis.call('HDEL', inflight, id)
  end
  out[#out + 1] = decision
end
return out
