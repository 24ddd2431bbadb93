-- Takes one slot of a semaphore if it is free, or if this holder has it
-- already: an earlier copy of this call, whose reply was lost, took it. It
-- takes nothing unless the semaphore's limit stored on this node, if any,
-- is the caller's.
-- KEYS[1] the slot to take; KEYS[2] the semaphore's limit, its number of
-- permits; KEYS[3], KEYS[4], ... the slots that follow KEYS[1], in order:
-- the window a refusal reports on. All are in one hash slot.
-- ARGV[1] holder's value; ARGV[2] TTL in milliseconds; ARGV[3] the caller's
-- number of permits; ARGV[4] how long the limit lasts after a call, in
-- milliseconds; ARGV[5] "1" to report the server's run_id and uptime, for
-- the restart guard.
-- Returns {outcome, detail, run_id, uptime in seconds}. Outcome 1: granted.
-- Outcome 0: refused; detail has one character per slot of the window,
-- KEYS[1] first, '1' where the slot is free on this node. Outcome -1: the
-- limit stored here is another number, which detail is; nothing is written.
local run_id, uptime = '', -1
if ARGV[5] == '1' then
  local info = redis.call('INFO', 'server')
  run_id = string.match(info, 'run_id:(%w+)') or ''
  uptime = tonumber(string.match(info, 'uptime_in_seconds:(%d+)') or '-1')
end
local limit = redis.call('GET', KEYS[2])
if limit and limit ~= ARGV[3] then
  return {-1, limit, run_id, uptime}
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
local granted = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not granted and redis.call('GET', KEYS[1]) == ARGV[1] then
  granted = true
end
if granted then
  return {1, '', run_id, uptime}
end
local free = {'0'}
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    free[#free + 1] = '0'
  else
    free[#free + 1] = '1'
  end
end
return {0, table.concat(free), run_id, uptime}
