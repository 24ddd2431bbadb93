-- Deletes a lock's key if it holds any of the given values: keys of ours
-- that may have been left on this node after their holdings ended.
-- KEYS[1] lock key; ARGV the values.
-- Returns 1 if it deleted the key, 0 if not.
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
for _, candidate in ipairs(ARGV) do
  if candidate == value then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
return 0
