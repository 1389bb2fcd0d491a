-- Commit one event's state writes on their own (`Txn::commit`): the same rules the settle
-- applies with the ack (`state_read`, `state_plan`, `state_apply`, `state_write` in
-- consume/state.lua, prepended).
-- KEYS: 1 the state hash. ARGV: the commit's arguments (see consume/state.lua).
-- Returns {1} committed, {0, KEY} a key read changed meanwhile (run the event again),
--         {-1, TOTAL} the quota would be exceeded (nothing written).
local state, commit = KEYS[1], ARGV
local known = {}
state_read(state, state_names(commit, 0, {}), known)
local refused, plan = state_plan(commit, 0, state_total(state), known)
if refused then return refused end
local pending = {}
state_apply(commit, 0, plan, known, pending)
state_write(state, pending)
state_count(state, plan.delta)
return {1}
