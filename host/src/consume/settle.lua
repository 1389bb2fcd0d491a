-- Settle a group of entries, each atomically: validate what it will write, ack it, and only
-- if the ack removed it from the pending list apply its effects. A replayed or racing settle
-- therefore writes nothing twice, and a write that would fail (a key of the wrong type) is
-- found before the ack, so nothing is acked and then lost.
-- KEYS: 1 retry schedule, 2 dead-letter stream, 3 seen, 4 dead, 5 inflight, 6 holds,
--       7 holders, 8 hold since, 9 parked count, 10 retry stream, 11 parked-list prefix,
--       12 the subscriber's state hash
-- ARGV: 1 group, 2 now ms, 3 dedupe window ms, 4 lease ms, then one netstring list per
--       entry: op, stream key, entry id, event id, owner, release ('1'/'0'), then per op:
--   ack:     record ('1'/'0'), then (follow-up stream, netstring fields) pairs
--   ackst:   an ack with state writes: record, the state commit's arguments (a netstring
--            list, see state_check in the prelude), then the follow-up pairs. Checked
--            before the XACK: a key read that changed meanwhile, or the quota, refuses the
--            whole settle of the entry (nothing acked or written; codes -3, -4)
--   retry:   due ms, netstring fields of the retry entry
--   dlq:     netstring fields of the dead-letter entry
--   skip:    nothing (a duplicate or an unsubscribed event: ack only)
--   release: charged ('1': the run's start was recorded); not acked: a host-side
--            failure or a stop, no attempt charged and the run taken off the crash budget
-- Returns one code per entry: 1 settled, 0 not pending any more (settled elsewhere),
-- -1 a follow-up stream holds another type, -2 the schedule, dead-letter or state key does,
-- -3 a state key the event read changed meanwhile, -4 its state writes pass the quota.
local now, window, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local function is_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  return t == 'none' or t == want
end

-- The run reached a verdict: forget its marker (and its count of runs) if this owner holds it.
local function forget(id, owner)
  local _, _, holder = marker(redis.call('HGET', KEYS[5], id))
  if holder == owner then redis.call('HDEL', KEYS[5], id) end
end

-- Per-key order: the holder is done, so the next event parked behind its key goes to the
-- retry stream and takes the hold over. Found by owner, so a holder whose entry was deleted
-- still releases its key. Every check comes before the first write, so a release never
-- stops half-way (a script error keeps the writes made before it): a parked entry that
-- could not be written back (nothing parks such a one any more) is set aside as a dead
-- letter and the key goes to the next one.
local function release(owner)
  local pkey = redis.call('HGET', KEYS[7], owner)
  if not pkey then return end
  if redis.call('HGET', KEYS[6], pkey) ~= owner then
    redis.call('HDEL', KEYS[7], owner)
    return
  end
  -- A retry stream of another type: the key stays held (nothing lost) until it is fixed.
  if not is_type(KEYS[10], 'stream') then return end
  local list = KEYS[11] .. pkey
  while true do
    local nxt = redis.call('LINDEX', list, 0)
    if not nxt then
      redis.call('HDEL', KEYS[7], owner)
      redis.call('HDEL', KEYS[6], pkey)
      redis.call('ZREM', KEYS[8], pkey)
      return
    end
    local f = fields(nxt)
    local next_owner
    if #f % 2 == 0 and #f <= 2 * (MAX_FIELDS + 8) then
      for i = 1, #f, 2 do
        if f[i] == '_origin' then next_owner = f[i + 1] end
      end
    end
    redis.call('LPOP', list)
    redis.call('DECR', KEYS[9])
    if next_owner then
      redis.call('XADD', KEYS[10], '*', unpack(f))
      redis.call('HDEL', KEYS[7], owner)
      redis.call('HSET', KEYS[6], pkey, next_owner)
      redis.call('HSET', KEYS[7], next_owner, pkey)
      redis.call('ZADD', KEYS[8], now, pkey)
      return
    end
    local letter = {'_kind', 'invalid-event', '_reason',
      'a parked entry of ' .. #f .. ' values could not be handed its key', '_origin', owner}
    for i = 1, math.min(#f - 1, 2 * MAX_FIELDS), 2 do
      if f[i] == 'id' or f[i] == 'type' or f[i] == 'source' or f[i] == 'time' then
        letter[#letter + 1] = f[i]
        letter[#letter + 1] = f[i + 1]
      end
    end
    if is_type(KEYS[2], 'stream') then redis.call('XADD', KEYS[2], '*', unpack(letter)) end
  end
end

-- A run that ended without a verdict (a host-side failure, a stop, a refused write): the
-- entry stays pending and, if the run was charged (`charged`: its start was recorded), it
-- comes off the event's crash budget. Only a live lease is given back, so a give-back applied
-- twice (a settle re-sent after its WAIT failed) changes nothing the second time. The marker
-- is kept while it counts runs, with its lease ended now (copies need not wait; the sweep,
-- which drops markers whose lease ended an hour ago, keeps the count).
local function give_back(id, owner, charged)
  local expiry, starts, holder = marker(redis.call('HGET', KEYS[5], id))
  if holder ~= owner or expiry <= now then return end
  if charged and starts > 0 then starts = starts - 1 end
  if starts == 0 then
    redis.call('HDEL', KEYS[5], id)
  else
    redis.call('HSET', KEYS[5], id, now .. ':' .. starts .. ':' .. owner)
  end
end

local out = {}
for i = 5, #ARGV do
  local s = fields(ARGV[i])
  local op, stream, entry, id, owner, rel = s[1], s[2], s[3], s[4], s[5], s[6] == '1'
  local code = 1
  if op == 'release' then
    give_back(id, owner, s[7] == '1')
  else
    if op == 'ack' or op == 'ackst' then
      for j = (op == 'ack' and 8 or 9), #s, 2 do
        if not is_type(s[j], 'stream') then code = -1 end
      end
      if op == 'ackst' and code == 1 then
        if not is_type(KEYS[12], 'hash') then
          code = -2
        else
          local refused = state_check(KEYS[12], fields(s[8]))
          if refused then code = refused[1] == 0 and -3 or -4 end
        end
      end
    elseif op == 'retry' then
      if not is_type(KEYS[1], 'zset') then code = -2 end
    elseif op == 'dlq' then
      if not is_type(KEYS[2], 'stream') then code = -2 end
    end
    if code == 1 and redis.call('XACK', stream, ARGV[1], entry) == 0 then
      code = 0
      -- An entry deleted while pending (taken over by XAUTOCLAIM, which already dropped it
      -- from the pending list) may have held its partition key: release it all the same.
      if op == 'dlq' and id == '' and rel then release(owner) end
    end
    -- Refused before the ack: the run ended without a verdict that could be written.
    if code == -2 then give_back(id, owner, true) end
    if code == 1 then
      if op == 'ack' or op == 'ackst' then
        if op == 'ackst' then state_apply(KEYS[12], fields(s[8])) end
        for j = (op == 'ack' and 8 or 9), #s, 2 do
          redis.call('XADD', s[j], '*', unpack(fields(s[j + 1])))
        end
        if s[7] == '1' and window > 0 then redis.call('ZADD', KEYS[3], now, id) end
        forget(id, owner)
      elseif op == 'retry' then
        redis.call('ZADD', KEYS[1], s[7], s[8])
        local _, _, holder = marker(redis.call('HGET', KEYS[5], id))
        if holder == owner then
          -- The event stays ours while it waits: copies keep waiting, the budget restarts.
          redis.call('HSET', KEYS[5], id, (tonumber(s[7]) + lease) .. ':0:' .. owner)
        end
      elseif op == 'dlq' then
        redis.call('XADD', KEYS[2], '*', unpack(fields(s[7])))
        if id ~= '' then
          if window > 0 then redis.call('ZADD', KEYS[4], now, id) end
          forget(id, owner)
        end
      end
      if rel and op ~= 'retry' then release(owner) end
    end
  end
  out[#out + 1] = code
end
if window > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - window))
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (now - window))
end
return out
