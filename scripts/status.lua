-- Reads a lock without taking it.
-- KEYS[1] lock key; KEYS[2] the lock's queue of waiters; KEYS[3] the waiters
-- that count as alive, scored with the server time in milliseconds until
-- which they do (see enqueue.lua). All three are in one hash slot.
-- ARGV[1] the most queue entries to look at.
-- Only the queued waiters whose time in KEYS[3] has not passed are counted.
-- Returns {value or '', PTTL of the key, live waiters}.
local value = redis.call('GET', KEYS[1])
if not value then
  value = ''
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local live = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)) do
  if tonumber(redis.call('ZSCORE', KEYS[3], id) or '0') > now then
    live = live + 1
  end
end
return {value, redis.call('PTTL', KEYS[1]), live}
