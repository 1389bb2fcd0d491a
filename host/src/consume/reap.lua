-- Remove consumers of a group that have nothing pending and have been silent for longer
-- than the idle time given, in one step: reading and deleting separately would let a host that
-- restarts under the same name in between lose the entries it was just given.
-- KEYS: 1 stream. ARGV: 1 group, 2 this host's consumer name, 3 idle ms.
-- Returns the names removed.
local stream = KEYS[1]
local group, me, idle = ARGV[1], ARGV[2], tonumber(ARGV[3])
local removed = {}
local consumers = redis.call('XINFO', 'CONSUMERS', stream, group)
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= me and tonumber(info['pending']) == 0 and tonumber(info['idle']) > idle then
    redis.call('XGROUP', 'DELCONSUMER', stream, group, info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
