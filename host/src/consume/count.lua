-- Count the entries of a stream after an id without sending them anywhere: `XRANGE` in
-- chunks inside Redis, only the count comes back (status asks this when Redis cannot tell a
-- group's lag, and must not pull a backlog's payloads over the network to learn its size).
-- KEYS: 1 stream. ARGV: 1 exclusive start id, 2 most entries to count.
-- Returns the count (at most the cap).
local stream = KEYS[1]
local n, start, cap = 0, '(' .. ARGV[1], tonumber(ARGV[2])
while n < cap do
  local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', math.min(1000, cap - n))
  if #batch == 0 then break end
  n = n + #batch
  start = '(' .. batch[#batch][1]
end
return n
