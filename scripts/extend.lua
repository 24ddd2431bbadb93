-- Extends the lock only while this holder still owns it.
-- KEYS[1] lock key; ARGV[1] holder's value; ARGV[2] TTL in milliseconds.
-- Returns 1 if extended, 0 if the key is gone or owned by another holder.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
