-- Puts a waiter in the lock's queue, or keeps it there, and tells who holds
-- the lock on this node.
-- KEYS[1] the lock's queue of waiters (a list of ids, oldest first);
-- KEYS[2] the lock key (a Semaphore passes its limit, and ignores the
-- reply); KEYS[3] the waiters that count as alive (a sorted set: id, scored
-- with the server time in milliseconds until which it does); KEYS[4] the
-- waiters that gave up (a sorted set: id, scored with the time until which
-- a late call of its own must not queue it again). All four are in one hash
-- slot.
-- ARGV[1] waiter id; ARGV[2] '1' to put the waiter first (it was woken but
-- lost the race), '0' to add it last unless it is queued already, '-' to
-- remove it; ARGV[3] how long, in milliseconds, the waiter counts as alive
-- without calling again; ARGV[4] how long the queue and both sets outlive
-- their last call, and a waiter that left stays so.
-- A set that gets an entry first loses those whose time has passed, and
-- then lives as long as the queue, so that nothing grows without bound or
-- lingers once nobody waits.
-- Returns the value that holds the lock on this node, or nil. With '-' it
-- returns 1 if a release (or a pass-on) took the waiter out of the queue
-- to wake it: it is out of the queue but still among the live waiters,
-- where release.lua leaves the waiter it wakes. The waiter may not have
-- heard that wake-up, or not used it, and must pass it on. Otherwise nil.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if ARGV[2] == '-' then
  local removed = redis.call('LREM', KEYS[1], 0, ARGV[1])
  local alive = redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), ARGV[1])
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
  if removed == 0 and alive == 1 then
    return 1
  end
  return false
end
if tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]) or '0') > now then
  return redis.call('GET', KEYS[2])
end
if ARGV[2] == '1' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('LPUSH', KEYS[1], ARGV[1])
elseif not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return redis.call('GET', KEYS[2])
