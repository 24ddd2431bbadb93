-- Reads a lock without taking it.
-- KEYS[1] lock key; KEYS[2] the lock's queue of waiters (same hash slot).
-- ARGV[1] the most queue entries to look at.
-- Each queued waiter has a mark, KEYS[2] .. ':' .. its id (see enqueue.lua):
-- only the waiters whose mark says 'alive' are counted.
-- Returns {value or '', PTTL of the key, live waiters}.
local value = redis.call('GET', KEYS[1])
if not value then
  value = ''
end
local live = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)) do
  if redis.call('GET', KEYS[2] .. ':' .. id) == 'alive' then
    live = live + 1
  end
end
return {value, redis.call('PTTL', KEYS[1]), live}
