-- One bounded step of trimming a stream by its retention, never below the safe floor.
--
-- KEYS: 1 the stream.
-- ARGV: [1] max_len ('' = none), [2] age cut: entries below this id are too old ('' = none),
-- [3] '1' = no limits, trim down to the floor (ferry's retry streams), [4] most radix-tree
-- nodes one call frees (the LIMIT of an approximate XTRIM is in entries: it is this many nodes'
-- worth at the stream's mean entries per node, so the work of one call is bounded whatever the
-- entries' size), [5] most entries walked to count what the floor keeps, [6] what an earlier
-- call of the pass counted ('' = nothing): "F W R", W entries from floor F to the last entry
-- delivered to its group, whose entries-read was R.
--
-- The floor is computed here, in the same script as the trim, so a group created or moved back
-- in between cannot lose entries: for each group, its oldest pending entry, or the entry after
-- its last delivered one. Nothing at or above the floor is removed.
--
-- Length is cut with XTRIM MAXLEN when everything at or above the floor is within the last
-- max_len entries, else with XTRIM MINID at the floor. How many entries the floor keeps is
-- known without walking when the group holding the floor has nothing pending (its lag), and
-- by walking at most ARGV[5] entries otherwise; only when that does not decide is the cut found
-- by walking from the head, at most ARGV[5] entries per call.
--
-- Returns {removed, more (1: call again), length, held (1: the floor keeps entries the limits
-- would remove), holder group or false, floor id or false, first id or false, what this call
-- counted for the next one (ARGV[6]) or false}.
local key = KEYS[1]
local max_len = tonumber(ARGV[1])
local age = ARGV[2] ~= '' and ARGV[2] or nil
local to_floor = ARGV[3] == '1'
local nodes, walk = tonumber(ARGV[4]), tonumber(ARGV[5])
local earlier = ARGV[6] or ''
if redis.call('EXISTS', key) == 0 then
  return {0, 0, 0, 0, false, false, false, false}
end
local limit, added
do
  local info = redis.call('XINFO', 'STREAM', key)
  local f = {}
  for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
  local per_node = math.max(1, math.floor(f['length'] / math.max(1, f['radix-tree-keys'])))
  limit = math.max(100, nodes * per_node)
  added = f['entries-added']
end
local counted = {}
for part in string.gmatch(earlier, '%S+') do counted[#counted + 1] = part end

-- Ids compare as pairs of unsigned decimals (up to 2^64: not Lua numbers).
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return string.sub(id, 1, dash - 1), string.sub(id, dash + 1)
end
local function numcmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end
local function cmp(x, y)
  local xm, xs = split(x)
  local ym, ys = split(y)
  local c = numcmp(xm, ym)
  if c ~= 0 then return c end
  return numcmp(xs, ys)
end
local function incr(n)
  local i = #n
  while i > 0 and string.sub(n, i, i) == '9' do i = i - 1 end
  if i == 0 then return '1' .. string.rep('0', #n) end
  return string.sub(n, 1, i - 1) .. string.char(string.byte(n, i) + 1) .. string.rep('0', #n - i)
end
local function after(id)
  local ms, seq = split(id)
  if seq == '18446744073709551615' then return incr(ms) .. '-0' end
  return ms .. '-' .. incr(seq)
end

local floor, holder, h_pending, h_lag, h_last, h_read
for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local need
  if f['pending'] > 0 then
    need = redis.call('XPENDING', key, f['name'])[2]
  else
    need = after(f['last-delivered-id'])
  end
  if floor == nil or cmp(need, floor) < 0 then
    floor, holder, h_pending, h_lag, h_last = need, f['name'], f['pending'], f['lag'], f['last-delivered-id']
    h_read = f['entries-read']
  end
end

local removed, more, held, count = 0, 0, 0, false
-- A bounded trim: whole nodes up to `limit` entries; once no whole node can go, the exact cut
-- (inside one node). `more` says whether another call may remove more.
local function xtrim(strategy, threshold)
  local n = redis.call('XTRIM', key, strategy, '~', threshold, 'LIMIT', limit)
  if n > 0 then
    more = 1
  else
    n = redis.call('XTRIM', key, strategy, threshold)
  end
  removed = removed + n
end

-- By age, and ferry's retry streams down to their floor.
local minid = age
if to_floor then
  minid = floor
elseif minid and floor and cmp(floor, minid) < 0 then
  minid = floor
end
if minid then xtrim('MINID', minid) end

-- How many entries are at or above the floor; and whether that count is exact (else a lower bound).
local function above_floor()
  if h_lag then
    if h_pending == 0 then return h_lag, true end
    -- Already over without walking: the lag and the pending entries are all at or above it.
    if h_lag + h_pending > max_len then return h_lag + h_pending, false end
    -- What an earlier call counted bounds this one's count when the floor has not gone back:
    -- at or above the floor now, at most what was counted plus everything added since.
    if #counted == 3 and cmp(counted[1], floor) <= 0 and added then
      local bound = tonumber(counted[2]) + added - tonumber(counted[3])
      if bound <= max_len then return bound, true end
    end
    local r = redis.call('XRANGE', key, floor, h_last, 'COUNT', walk + 1)
    if #r <= walk and h_read then count = floor .. ' ' .. #r .. ' ' .. h_read end
    return h_lag + #r, #r <= walk
  end
  local r = redis.call('XREVRANGE', key, '+', floor, 'COUNT', walk + 1)
  return #r, #r <= walk
end

local len = redis.call('XLEN', key)
if max_len and more == 0 and len > max_len then
  if floor == nil then
    xtrim('MAXLEN', max_len)
  else
    local above, exact = above_floor()
    if exact and above <= max_len then
      xtrim('MAXLEN', max_len)
    elseif above > max_len then
      xtrim('MINID', floor)
      held = 1
    else
      -- Undecided (a long pending window): walk from the head, at most `walk` entries.
      local excess = len - max_len
      local k = math.min(excess, walk)
      local r = redis.call('XRANGE', key, '-', floor, 'COUNT', k + 1)
      local below = #r
      if below > 0 and r[below][1] == floor then below = below - 1 end
      if below >= excess then
        xtrim('MAXLEN', max_len)
      elseif #r < k + 1 or below < #r then
        xtrim('MINID', floor)
        held = 1
      else
        xtrim('MINID', r[k + 1][1])
        more = 1
      end
    end
  end
  len = redis.call('XLEN', key)
end

local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
local first_id = first and first[1] or false
if more == 0 and age and first_id and cmp(first_id, age) < 0 and not to_floor then held = 1 end
return {removed, more, len, held, holder or false, floor or false, first_id, count}
