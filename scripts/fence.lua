-- Records a fencing token, only while this holder still owns the lock.
-- KEYS[1] lock key; KEYS[2] fencing counter (same hash slot).
-- ARGV[1] holder's value; ARGV[2] token.
-- Sets the counter to max(counter, token). Returns 1 if the holder owns the
-- lock here, 0 if not (and then changes nothing).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
