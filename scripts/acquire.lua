-- Acquires the lock if it is free, or if this holder has it already: an
-- earlier copy of this call, whose reply was lost, granted it.
-- KEYS[1] lock key; KEYS[2] fencing counter (same hash slot).
-- ARGV[1] holder's value; ARGV[2] TTL in milliseconds;
-- ARGV[3] "1" to read the fencing counter; ARGV[4] "1" to report the server's
-- run_id and uptime, for the restart guard.
-- Returns {granted (1 or 0), counter or PTTL, run_id, uptime in seconds}:
-- the counter when granted (0 if absent or not asked for), the lock's PTTL
-- when not. The counter is read first, so that a counter that cannot be
-- read fails the call before it writes anything.
local counter = '0'
if ARGV[3] == '1' then
  counter = redis.call('GET', KEYS[2]) or '0'
end
local run_id, uptime = '', -1
if ARGV[4] == '1' then
  local info = redis.call('INFO', 'server')
  run_id = string.match(info, 'run_id:(%w+)') or ''
  uptime = tonumber(string.match(info, 'uptime_in_seconds:(%d+)') or '-1')
end
local granted = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not granted and redis.call('GET', KEYS[1]) == ARGV[1] then
  granted = true
end
if granted then
  return {1, counter, run_id, uptime}
end
return {0, tostring(redis.call('PTTL', KEYS[1])), run_id, uptime}
