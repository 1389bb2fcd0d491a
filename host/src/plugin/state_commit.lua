-- Commit one event's state writes on their own (`Txn::commit`): the same rules the settle
-- applies with the ack (`state_plan`, `state_apply` in consume/state.lua, prepended).
-- KEYS: 1 the state hash. ARGV: the commit's arguments (see consume/state.lua).
-- Returns {1} committed, {0, KEY} a key read changed meanwhile (run the event again),
--         {-1, TOTAL} the quota would be exceeded (nothing written).
local state, commit = KEYS[1], ARGV
local refused, plan = state_plan(state, commit, state_total(state))
if refused then return refused end
state_apply(state, commit, plan)
state_count(state, plan.delta)
return {1}
