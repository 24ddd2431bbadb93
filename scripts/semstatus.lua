-- Reads a semaphore without taking a permit.
-- KEYS[1] the semaphore's limit; KEYS[2] its queue of waiters; KEYS[3] the
-- waiters that count as alive, scored with the server time in milliseconds
-- until which they do (see enqueue.lua); KEYS[4], KEYS[5], ... its slots, in
-- order. All are in one hash slot.
-- ARGV[1] the most queue entries to look at: 0 to count no waiters.
-- Returns {the limit stored here or '', one character per slot, '1' where
-- it is held, live waiters}.
local limit = redis.call('GET', KEYS[1])
if not limit then
  limit = ''
end
local held = {}
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    held[#held + 1] = '1'
  else
    held[#held + 1] = '0'
  end
end
local live = 0
local most = tonumber(ARGV[1])
if most > 0 then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, most - 1)) do
    if tonumber(redis.call('ZSCORE', KEYS[3], id) or '0') > now then
      live = live + 1
    end
  end
end
return {limit, table.concat(held), live}
