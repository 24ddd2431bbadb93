-- Releases the lock only while this holder still owns it, and wakes the next
-- waiter in the lock's queue.
-- KEYS[1] lock key; KEYS[2] the lock's queue of waiters (same hash slot).
-- ARGV[1] holder's value; ARGV[2] the prefix of the channels of waking
-- Clients, or '' to release without waking anyone (undoing a failed
-- attempt's grants); ARGV[3] the holder's own waiter id, or '' if it did not
-- wait.
-- Wakes the waiter at the head of the queue by publishing its id on the
-- channel of its Client, whose id starts the waiter's id up to a '.', so
-- that one release wakes one waiter and reaches one Client.
-- Returns 2 if deleted and a waiter was woken, 1 if deleted, 0 if the key is
-- gone or owned by another holder.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then
  if ARGV[3] ~= '' then
    redis.call('LREM', KEYS[2], 0, ARGV[3])
  end
  local next = redis.call('LPOP', KEYS[2])
  if next then
    local client = string.match(next, '^([^.]+)%.')
    if client then
      redis.call('PUBLISH', ARGV[2] .. client, next)
    end
    return 2
  end
end
return 1
