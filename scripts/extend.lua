-- Extends each lock only while its holder still owns it, and with it a key
-- that lives as long as the lock is held (a semaphore's limit).
-- KEYS[2i-1] a lock key; KEYS[2i] the key renewed with it, which may be
-- the lock key again; ARGV[3i-2] its holder's value; ARGV[3i-1] its TTL in
-- milliseconds; ARGV[3i] the TTL of KEYS[2i] in milliseconds, or 0 to leave
-- it alone.
-- Returns one value per lock: 1 if extended, 0 if the key is gone or owned
-- by another holder.
local extended = {}
for i = 1, #KEYS / 2 do
  if redis.call('GET', KEYS[2 * i - 1]) == ARGV[3 * i - 2] then
    extended[i] = redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[3 * i - 1])
    if ARGV[3 * i] ~= '0' then
      redis.call('PEXPIRE', KEYS[2 * i], ARGV[3 * i])
    end
  else
    extended[i] = 0
  end
end
return extended
