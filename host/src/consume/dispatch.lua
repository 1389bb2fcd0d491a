-- Decide, atomically with recording it, what happens to each event of a read that the
-- precheck (a MULTI of native commands, see dispatch.rs) could not decide: handle it now, ack
-- it as a duplicate, let it wait for another delivery of the same event to settle,
-- dead-letter it (crash budget spent), or park it behind its partition key.
-- KEYS: 1 seen, 2 dead, 3 inflight, 4 holds, 5 holders, 6 hold since, 7 parked count,
--       8 parked-list prefix (a prefix, not a key)
-- ARGV: 1 group, 2 now ms, 3 dedupe window ms (0: off), 4 lease ms, 5 max deliveries,
--       6 ordered ('1'/'0'), then 8 values per event: stream key, entry id, event id,
--       owner, replay ('1'/'0'), partition key ('' for none), netstring fields to park,
--       the in-flight marker the precheck wrote for it ('' for none)
-- A marker the precheck wrote is this read's own guess, not a run: it counts as absent, and
-- is removed unless the verdict is to run.
-- Returns one verdict per event: run, dup, dead, wait, crash or park; run, dup and dead with
-- an `h` when the event holds its partition key (its settle must hand the key on).
local now, window, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
-- Holds exist only under per-key order (or left from it): skip the lookups when none do.
local any_holds = redis.call('HLEN', KEYS[4]) > 0
local max_deliveries, ordered = tonumber(ARGV[5]), ARGV[6] == '1'
local cutoff = now - window
local out = {}
for i = 7, #ARGV, 8 do
  local stream, entry, id, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local replay, pkey, parked, guess = ARGV[i + 4] == '1', ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  local verdict
  local current = redis.call('HGET', KEYS[3], id)
  local guessed = guess ~= '' and current == guess
  if guessed then current = nil end
  local expiry, starts, holder = marker(current)
  if window > 0 then
    local handled = redis.call('ZSCORE', KEYS[1], id)
    if handled and tonumber(handled) >= cutoff then
      verdict = 'dup'
    elseif not replay then
      local dead = redis.call('ZSCORE', KEYS[2], id)
      if dead and tonumber(dead) >= cutoff then verdict = 'dead' end
    end
    if not verdict and holder and holder ~= owner and expiry > now then verdict = 'wait' end
  end
  -- A duplicate may be the holder of its key (a parked copy moved to the retry stream after
  -- the other copy was handled): it must hand the key on, or the key stays held forever.
  if (verdict == 'dup' or verdict == 'dead') and any_holds and redis.call('HEXISTS', KEYS[5], owner) == 1 then
    verdict = verdict .. 'h'
  end
  if not verdict and starts >= max_deliveries then verdict = 'crash' end
  local holds = false
  if not verdict and ordered and pkey ~= '' then
    local current = redis.call('HGET', KEYS[4], pkey)
    if current and current ~= owner then
      redis.call('XACK', stream, ARGV[1], entry)
      redis.call('RPUSH', KEYS[8] .. pkey, parked)
      redis.call('INCR', KEYS[7])
      verdict = 'park'
    else
      if not current then
        redis.call('HSET', KEYS[4], pkey, owner)
        redis.call('HSET', KEYS[5], owner, pkey)
        redis.call('ZADD', KEYS[6], now, pkey)
      end
      holds = true
    end
  end
  if not verdict then
    -- A holder from before `ordered` was turned off still hands its key on.
    if not holds and any_holds and redis.call('HEXISTS', KEYS[5], owner) == 1 then holds = true end
    -- Leased, not yet started: the run is charged to the crash budget when a worker
    -- really starts it (start.lua), so events that wait for a worker are never charged.
    redis.call('HSET', KEYS[3], id, (now + lease) .. ':' .. starts .. ':' .. owner)
    verdict = holds and 'runh' or 'run'
  elseif guessed then
    redis.call('HDEL', KEYS[3], id)
  end
  out[#out + 1] = verdict
end
return out
