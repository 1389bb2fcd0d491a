-- Commit one event's state writes (issue 25): every key it read still at the version it
-- saw, the subscriber's quota kept, then each write applied and its version bumped. Meant to
-- run inside the settle, guarded by the same XACK as the follow-ups; standalone here so the
-- rules have one home and a test of their own.
--
-- The state of (stream S, subscriber) is one hash in S's slot: field `=KEY` the value,
-- `#KEY` its version (bumped by every write, deletes too, never reset, so a version read is
-- never seen again after a change), `_bytes` the total of keys and values stored.
--
-- KEYS: 1 the state hash.
-- ARGV: 1 quota bytes (0: none), 2 reads n, then n × (key, version seen),
--       then writes m, then m × (key, op `s` set | `d` delete, value or "").
-- Returns {1} committed, {0, KEY} a key read changed meanwhile (run the event again),
--         {-1, TOTAL} the quota would be exceeded (nothing written).
local state = KEYS[1]
local quota = tonumber(ARGV[1])

local function ferry_state_commit(argv, at)
  local reads = tonumber(argv[at]); at = at + 1
  for i = 0, reads - 1 do
    local key, seen = argv[at + 2 * i], argv[at + 2 * i + 1]
    local now = redis.call('HGET', state, '#' .. key) or '0'
    if now ~= seen then return {0, key} end
  end
  at = at + 2 * reads
  local writes = tonumber(argv[at]); at = at + 1
  local delta = 0
  for i = 0, writes - 1 do
    local key, op, value = argv[at + 3 * i], argv[at + 3 * i + 1], argv[at + 3 * i + 2]
    local old = redis.call('HSTRLEN', state, '=' .. key)
    local had = redis.call('HEXISTS', state, '=' .. key) == 1
    if op == 's' then
      delta = delta + #value - old + (had and 0 or #key)
    elseif had then
      delta = delta - old - #key
    end
  end
  local total = tonumber(redis.call('HGET', state, '_bytes') or '0')
  if quota > 0 and delta > 0 and total + delta > quota then return {-1, total} end
  for i = 0, writes - 1 do
    local key, op, value = argv[at + 3 * i], argv[at + 3 * i + 1], argv[at + 3 * i + 2]
    if op == 's' then
      redis.call('HSET', state, '=' .. key, value)
    else
      redis.call('HDEL', state, '=' .. key)
    end
    redis.call('HINCRBY', state, '#' .. key, 1)
  end
  if delta ~= 0 then redis.call('HINCRBY', state, '_bytes', delta) end
  return {1}
end

return ferry_state_commit(ARGV, 2)
