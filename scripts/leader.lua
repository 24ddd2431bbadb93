-- Reads an election on this node.
-- KEYS[1] the lock key; KEYS[2] the leader's record (same hash slot).
-- Returns {holder, record, PTTL of the lock}: '' for a holder or a record
-- that is absent, and 0 for the PTTL of a free lock.
local holder = redis.call('GET', KEYS[1])
if not holder then
  return {'', '', 0}
end
return {holder, redis.call('GET', KEYS[2]) or '', redis.call('PTTL', KEYS[1])}
