-- Puts a waiter in the lock's queue, or keeps it there, and tells who holds
-- the lock on this node.
-- KEYS[1] the lock's queue of waiters (a list, oldest first); KEYS[2] the
-- lock key; KEYS[3] the waiter's mark: 'alive' while it keeps calling,
-- 'left' once it has given up (all in one hash slot).
-- ARGV[1] waiter id; ARGV[2] '1' to put the waiter first (it was woken but
-- lost the race), '0' to add it last unless it is queued already, '-' to
-- remove it; ARGV[3] how long, in milliseconds, the waiter counts as alive
-- without calling again; ARGV[4] how long the queue, and the mark of a
-- waiter that left, outlive their last call.
-- A waiter that has left is not queued again by a late call of its own.
-- Returns the value that holds the lock on this node, or nil.
if ARGV[2] == '-' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('SET', KEYS[3], 'left', 'PX', ARGV[4])
  return false
end
if redis.call('GET', KEYS[3]) == 'left' then
  return redis.call('GET', KEYS[2])
end
if ARGV[2] == '1' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('LPUSH', KEYS[1], ARGV[1])
elseif not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('SET', KEYS[3], 'alive', 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('GET', KEYS[2])
