-- Deletes a lock's key if it holds any of the given values: keys of ours
-- that may have been left on this node after their holdings ended.
-- KEYS[1] lock key; KEYS[2], if given, a key that goes with the lock and is
-- deleted with it (an election's record of its leader), in its hash slot;
-- ARGV the values.
-- Returns 1 if it deleted the key, 0 if not.
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
for _, candidate in ipairs(ARGV) do
  if candidate == value then
    redis.call('DEL', KEYS[1])
    if KEYS[2] then
      redis.call('DEL', KEYS[2])
    end
    return 1
  end
end
return 0
