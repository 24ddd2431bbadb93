-- Records the leader of an election for the term its holder began, or the
-- value it proclaims in that term, only while the holder still owns the
-- election's lock on this node, and tells the election's observers.
-- KEYS[1] the lock key; KEYS[2] its fencing counter; KEYS[3] the leader's
-- record (all three in one hash slot).
-- ARGV[1] the holder's value; ARGV[2] the term number; ARGV[3] the record:
-- "term:proclamation:holder", a newline, and the value; ARGV[4] the channel
-- of the observers.
-- Sets the counter to max(counter, term), as fence.lua does, and the record
-- to expire with the lock on this node, unless it holds a later
-- proclamation of the term. Returns 1 if the holder owns the
-- lock here, 0 if not (and then changes nothing). A denied PUBLISH (an ACL
-- without channel permissions) does not fail the call: observers also poll.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
-- A later proclamation of the same term is kept: a repair may send an
-- older one again.
local current = redis.call('GET', KEYS[3])
if current then
  local term, proclamation = string.match(current, '^(%d+):(%d+):')
  local _, new = string.match(ARGV[3], '^(%d+):(%d+):')
  if term == ARGV[2] and tonumber(proclamation) > tonumber(new) then
    return 1
  end
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1 then
  ttl = 1
end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ttl)
redis.pcall('PUBLISH', ARGV[4], ARGV[2])
return 1
