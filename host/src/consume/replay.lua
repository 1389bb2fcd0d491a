-- Replay one dead letter: move it to the subscriber's retry stream only if this call is the
-- one that removed it, so two replays of the same dead letters at once publish each once.
-- KEYS: 1 dead-letter stream, 2 retry stream. ARGV: 1 dead-letter entry id, 2 netstring
-- fields of the retry entry. Returns 1 if replayed, 0 if already gone.
local dlq, retry = KEYS[1], KEYS[2]
local letter, stored = ARGV[1], ARGV[2]
if redis.call('XDEL', dlq, letter) == 1 then
  redis.call('XADD', retry, '*', unpack(fields(stored)))
  return 1
end
return 0
