-- Extends each lock only while its holder still owns it.
-- KEYS[i] a lock key; ARGV[2i-1] its holder's value; ARGV[2i] its TTL in
-- milliseconds.
-- Returns one value per key: 1 if extended, 0 if the key is gone or owned by
-- another holder.
local extended = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[2 * i - 1] then
    extended[i] = redis.call('PEXPIRE', key, ARGV[2 * i])
  else
    extended[i] = 0
  end
end
return extended
