-- Puts a waiter in the lock's queue, or keeps it there, and tells who holds
-- the lock on this node.
-- KEYS[1] the lock's queue of waiters (a list, oldest first); KEYS[2] the
-- lock key; KEYS[3] the queue's deadlines (a sorted set: waiter id → the
-- server time, in milliseconds, until which it counts as alive); KEYS[4] the
-- waiter's mark that it left (all in one hash slot).
-- ARGV[1] waiter id; ARGV[2] '1' to put the waiter first (it was woken but
-- lost the race), '0' to add it last unless it is queued already, '-' to
-- remove it; ARGV[3] how long, in milliseconds, the waiter counts as alive
-- without calling again; ARGV[4] how long the queue outlives its last call.
-- A waiter that has left is not queued again by a late call of its own.
-- Returns the value that holds the lock on this node, or nil.
if ARGV[2] == '-' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
  return false
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.call('GET', KEYS[2])
end
if ARGV[2] == '1' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('LPUSH', KEYS[1], ARGV[1])
elseif not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return redis.call('GET', KEYS[2])
