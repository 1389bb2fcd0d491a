-- Settle a batch of entries (ack, retry, dead-letter or give back), each atomically: validate
-- what it will write, ack it, and only if the ack removed it from the pending list apply its
-- effects. A replayed or racing settle therefore writes nothing twice, and a write that would
-- fail (a key of the wrong type) is found before the ack, so nothing is acked and then lost.
-- KEYS: 1-5 the per-key set (prelude `per_key`), 6 retry schedule, 7 dead-letter stream,
--       8 seen, 9 dead, 10 inflight, 11 retry stream, 12 the subscriber's state hash
-- ARGV: 1 group, 2 now ms, 3 dedupe window ms, 4 lease ms, then per entry, flat (settle.rs
--       `encode`; read by index, several times cheaper in Lua than decoding netstrings): the
--       count n of its values, then n values: op, stream key, entry id, event id, owner, hand
--       on ('1'/'0': the event may hold its partition key, which the settle then hands on),
--       then per op:
--   ack:     record ('1'/'0'), then (follow-up stream, netstring fields) pairs
--   ackst:   an ack with state writes: record, the count m of the state commit's arguments,
--            the m arguments (see state_plan in state.lua), then the follow-up pairs. Checked
--            before the XACK: a key read that changed meanwhile, or the quota, refuses the
--            whole settle of the entry (nothing acked or written; codes -3, -4)
--   retry:   due ms, netstring fields of the retry entry
--   dlq:     netstring fields of the dead-letter entry
--   skip:    nothing (a duplicate or an unsubscribed event: ack only)
--   giveback: charged ('1': the run's start was recorded); not acked: a host-side
--            failure or a stop, no attempt charged and the run taken off the crash budget
-- Returns one code per entry: 1 settled, 0 not pending any more (settled elsewhere),
-- -1 a follow-up stream holds another type, -2 the schedule, dead-letter or state key does,
-- -3 a state key the event read changed meanwhile, -4 its state writes pass the quota.
local K = per_key()
local schedule, dlq, seen, dead = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local inflight, retry, state = KEYS[10], KEYS[11], KEYS[12]
local group, now, window, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local FIRST_ENTRY = 5

local function is_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  return t == 'none' or t == want
end

-- Per-key order: the holder is done, so the next event parked behind its key goes to the
-- retry stream and takes the hold over. Found by owner, so a holder whose entry was deleted
-- still hands its key on. Every check comes before the first write, so a hand-on never
-- stops half-way (a script error keeps the writes made before it): a parked entry that
-- could not be written back (nothing parks such a one any more) is set aside as a dead
-- letter and the key goes to the next one.
local function hand_on(owner)
  local pkey = redis.call('HGET', K.holders, owner)
  if not pkey then return end
  if redis.call('HGET', K.holds, pkey) ~= owner then
    redis.call('HDEL', K.holders, owner)
    return
  end
  -- A retry stream of another type: the key stays held (nothing lost) until it is fixed.
  if not is_type(retry, 'stream') then return end
  local list = K.parked .. pkey
  while true do
    local nxt = redis.call('LINDEX', list, 0)
    if not nxt then
      redis.call('HDEL', K.holders, owner)
      redis.call('HDEL', K.holds, pkey)
      redis.call('ZREM', K.since, pkey)
      return
    end
    local f = fields(nxt)
    local next_owner
    if #f % 2 == 0 and #f <= 2 * (MAX_FIELDS + 8) then
      for i = 1, #f, 2 do
        if f[i] == F.ORIGIN then next_owner = f[i + 1] end
      end
    end
    redis.call('LPOP', list)
    redis.call('DECR', K.parked_count)
    if next_owner then
      redis.call('XADD', retry, '*', unpack(f))
      redis.call('HDEL', K.holders, owner)
      hold(K, pkey, next_owner, now)
      return
    end
    local letter = {F.KIND, INVALID_EVENT, F.REASON,
      'a parked entry of ' .. #f .. ' values could not be handed its key', F.ORIGIN, owner}
    for i = 1, math.min(#f - 1, 2 * MAX_FIELDS), 2 do
      if f[i] == A.ID or f[i] == A.TYPE or f[i] == A.SOURCE or f[i] == A.TIME then
        letter[#letter + 1] = f[i]
        letter[#letter + 1] = f[i + 1]
      end
    end
    if is_type(dlq, 'stream') then redis.call('XADD', dlq, '*', unpack(letter)) end
  end
end

-- A run that ended without a verdict (a host-side failure, a stop, a refused write): the
-- entry stays pending and, if the run was charged (`charged`: its start was recorded), it
-- comes off the event's crash budget. Only a live lease is given back, so a give-back applied
-- twice (a settle re-sent after its WAIT failed) changes nothing the second time. The marker
-- is kept while it counts runs, with its lease ended now (copies need not wait; the sweep,
-- which drops markers whose lease ended an hour ago, keeps the count).
local function give_back(id, owner, charged)
  local expiry, starts, holder = marker(redis.call('HGET', inflight, id))
  if holder ~= owner or expiry <= now then return end
  if charged and starts > 0 then starts = starts - 1 end
  if starts == 0 then
    redis.call('HDEL', inflight, id)
  else
    mark(inflight, id, now, starts, owner)
  end
end

-- What every ack of the call shares, written once at its end (or before an entry of another
-- op, which reads the markers): the handled ids recorded, the run markers forgotten, the
-- state writes and total. A Lua table caches each key's type check for the call.
local handled, done, types = {}, {}, {}
local total, delta = nil, 0
-- The state fields the call's commits need, read once (state.lua `state_read`), and the
-- writes of the commits applied so far (`state_apply`, sent by `state_write`).
local known, pending = nil, {}

local function of_type(key, want)
  local known_type = types[key]
  if known_type == nil then
    known_type = is_type(key, want)
    types[key] = known_type
  end
  return known_type
end

-- Forget the markers of the acks so far whose holder is their owner, in one HMGET and one
-- HDEL; record their ids as handled in one ZADD; write the state commits applied so far.
local function flush()
  if #done > 0 then
    local ids = {}
    for i = 1, #done do ids[i] = done[i][1] end
    local markers = chunked('HMGET', inflight, ids, STATE_CHUNK)
    local gone = {}
    for i = 1, #ids do
      local _, _, holder = marker(markers[i])
      if holder == done[i][2] then gone[#gone + 1] = ids[i] end
    end
    if #gone > 0 then chunked('HDEL', inflight, gone, STATE_CHUNK) end
    done = {}
  end
  if #handled > 0 then
    local args = {}
    for i = 1, #handled do
      args[#args + 1] = now
      args[#args + 1] = handled[i]
    end
    chunked('ZADD', seen, args, STATE_CHUNK)
    handled = {}
  end
  if next(pending) ~= nil then pending = state_write(state, pending) end
end

-- Read, in one HMGET, every state field the call's commits (`ackst` entries from ARGV index
-- `i` on) need, once the state hash is known to be one.
local function read_state(i)
  known = {}
  state_read(state, settle_names(i), known)
end

local out = {}
local i = FIRST_ENTRY
while i <= #ARGV do
  local n, s = tonumber(ARGV[i]), {}
  for j = 1, n do s[j] = ARGV[i + j] end
  i = i + n + 1
  local op, stream, entry, id, owner, holds = s[1], s[2], s[3], s[4], s[5], s[6] == '1'
  local acking = op == 'ack' or op == 'ackst'
  if not acking and op ~= 'skip' then flush() end
  local code = 1
  -- Where the entry's values sit in ARGV (`s[j]` is `ARGV[base + j]`), and its plan.
  local base, plan = i - n - 1, nil
  -- Where an ack's follow-up pairs begin: after the record flag, and the state commit.
  local follow = 8
  if op == 'ackst' then follow = 9 + tonumber(s[8]) end
  if op == 'giveback' then
    give_back(id, owner, s[7] == '1')
  else
    if acking then
      for j = follow, #s, 2 do
        if not of_type(s[j], 'stream') then code = -1 end
      end
      if op == 'ackst' and code == 1 then
        if not of_type(state, 'hash') then
          code = -2
        else
          total = total or state_total(state)
          if not known then read_state(base) end
          local refused
          refused, plan = state_plan(ARGV, base + 8, total + delta, known)
          if refused then code = refused[1] == 0 and -3 or -4 end
        end
      end
    elseif op == 'retry' then
      if not is_type(schedule, 'zset') then code = -2 end
    elseif op == 'dlq' then
      if not is_type(dlq, 'stream') then code = -2 end
    end
    if code == 1 and redis.call('XACK', stream, group, entry) == 0 then
      code = 0
      -- An entry deleted while pending (taken over by XAUTOCLAIM, which already dropped it
      -- from the pending list) may have held its partition key: hand it on all the same.
      if op == 'dlq' and id == '' and holds then hand_on(owner) end
    end
    -- Refused before the ack: the run ended without a verdict that could be written.
    if code == -2 then
      flush()
      give_back(id, owner, true)
    end
    if code == 1 then
      if acking then
        if op == 'ackst' then
          state_apply(ARGV, base + 8, plan, known, pending)
          delta = delta + plan.delta
        end
        for j = follow, #s, 2 do
          redis.call('XADD', s[j], '*', unpack(fields(s[j + 1])))
        end
        if s[7] == '1' and window > 0 then handled[#handled + 1] = id end
        done[#done + 1] = {id, owner}
      elseif op == 'retry' then
        redis.call('ZADD', schedule, s[7], s[8])
        local _, _, holder = marker(redis.call('HGET', inflight, id))
        if holder == owner then
          -- The event stays ours while it waits: copies keep waiting, the budget restarts.
          mark(inflight, id, tonumber(s[7]) + lease, 0, owner)
        end
      elseif op == 'dlq' then
        redis.call('XADD', dlq, '*', unpack(fields(s[7])))
        if id ~= '' then
          if window > 0 then redis.call('ZADD', dead, now, id) end
          -- Its marker is forgotten with the acks' (`flush`, before any entry that reads one).
          done[#done + 1] = {id, owner}
        end
      end
      if holds and op ~= 'retry' then hand_on(owner) end
    end
  end
  out[#out + 1] = code
end
flush()
if total then state_count(state, delta) end
if window > 0 then
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. (now - window))
  redis.call('ZREMRANGEBYSCORE', dead, '-inf', '(' .. (now - window))
end
return out
