-- The id of the first entry to keep in KEYS[1] when its oldest ARGV[1] entries go, found
-- inside Redis so no payload crosses the network; false when the stream has no more.
local r = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[1]) + 1)
if #r <= tonumber(ARGV[1]) then return false end
return r[#r][1]
