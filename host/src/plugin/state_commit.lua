-- Commit one event's state writes on their own (`Txn::commit`): the same rules the settle
-- applies with the ack (`state_check`, `state_apply` in consume/prelude.lua, prepended).
-- KEYS: 1 the state hash. ARGV: the commit's arguments (see the prelude).
-- Returns {1} committed, {0, KEY} a key read changed meanwhile (run the event again),
--         {-1, TOTAL} the quota would be exceeded (nothing written).
local refused = state_check(KEYS[1], ARGV)
if refused then return refused end
state_apply(KEYS[1], ARGV)
return {1}
