-- Settle a batch of acks that write state and nothing else (no follow-ups, no partition key
-- to hand on): the state path's hot case, in fewer commands than settle.lua spends on it.
-- Each entry is still atomic and guarded by its XACK: its commit is checked (state.lua
-- `state_plan`) before the ack and applied only if the ack removed it from the pending list,
-- so a replayed or racing settle writes nothing twice.
-- KEYS: 1 seen, 2 dead, 3 inflight, 4 the subscriber's state hash (scripts.rs `acks_keys`).
-- ARGV: as settle.lua's (settle.rs `encode`): 1 group, 2 now ms, 3 dedupe window ms, 4 lease
--       ms (unused), then per entry its count n and n values: op (`ack` or `ackst`), stream
--       key, entry id, event id, owner, hand on ('0'), record, and for `ackst` the count m of
--       the commit's arguments and the m arguments.
-- Returns one code per entry as settle.lua does (1 settled, 0 settled elsewhere, -3 a state
-- key the event read changed meanwhile, -4 the quota), or nil, having written nothing, when
-- the state key holds another type: the caller then sends the same arguments to settle.lua,
-- which answers for that case.
--
-- What it saves over settle.lua: the state fields and the total are read in one HMGET; the
-- handled ids recorded in one ZADD whose score is ARGV[2] as sent; the run markers deleted
-- in one HDEL without reading them first. That last is what the plain MULTI settle does
-- (settle.rs `settle_plain`): the event is settled in the same step, so the marker's only
-- reader from now on would see a settled event.
local seen, dead, inflight, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, now, window = ARGV[1], ARGV[2], tonumber(ARGV[3])
local FIRST_ENTRY = 5

local t = redis.call('TYPE', state)['ok']
if t ~= 'hash' and t ~= 'none' then return false end

-- Every field the commits need, and the total, in one HMGET.
local names = settle_names(FIRST_ENTRY)
local known, total = {}, 0
if #names > 0 then
  names[#names + 1] = S.BYTES
  state_read(state, names, known)
  total = tonumber(known[S.BYTES] or '0')
end

local out, pending, delta, handled, gone = {}, {}, 0, {}, {}
local i = FIRST_ENTRY
while i <= #ARGV do
  local base = i
  i = i + tonumber(ARGV[i]) + 1
  local op, stream, entry, id = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local code, plan = 1, nil
  if op == 'ackst' then
    local refused
    refused, plan = state_plan(ARGV, base + 8, total + delta, known)
    if refused then code = refused[1] == 0 and -3 or -4 end
  end
  if code == 1 and redis.call('XACK', stream, group, entry) == 0 then code = 0 end
  if code == 1 then
    if plan then
      state_apply(ARGV, base + 8, plan, known, pending)
      delta = delta + plan.delta
    end
    if ARGV[base + 7] == '1' and window > 0 then
      handled[#handled + 1] = now
      handled[#handled + 1] = id
    end
    if id ~= '' then gone[#gone + 1] = id end
  end
  out[#out + 1] = code
end
if next(pending) ~= nil then state_write(state, pending) end
state_count(state, delta)
if #gone > 0 then chunked('HDEL', inflight, gone, STATE_CHUNK) end
if #handled > 0 then chunked('ZADD', seen, handled, STATE_CHUNK) end
if window > 0 then
  local cutoff = '(' .. (tonumber(now) - window)
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', cutoff)
  redis.call('ZREMRANGEBYSCORE', dead, '-inf', cutoff)
end
return out
