-- Puts a waiter in the lock's queue, or keeps it there, and tells whether the
-- lock is held on this node: if it is, its release will wake a waiter.
-- KEYS[1] the lock's queue of waiters; KEYS[2] the lock key; KEYS[3] the
-- waiter's tombstone, set when it leaves (all in one hash slot).
-- ARGV[1] waiter id; ARGV[2] the queue's TTL in milliseconds, so that ids of
-- waiters that died expire; ARGV[3] '1' to put the waiter first (it was woken
-- but lost the race), '0' to add it last unless it is queued already, '-' to
-- remove it. A waiter that has left is not queued again by a call of its own
-- that arrives late.
if ARGV[3] == '-' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
  return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
if ARGV[3] == '1' then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('LPUSH', KEYS[1], ARGV[1])
elseif not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('EXISTS', KEYS[2])
