-- Releases the lock only while this holder still owns it, and wakes the
-- waiters subscribed to the lock's channel. The message is the holder's value,
-- so that a waiter hearing one release from several nodes acts on it once.
-- KEYS[1] lock key; ARGV[1] holder's value; ARGV[2] release channel, or ''
-- to release without waking anyone (undoing a failed attempt's grants, which
-- would otherwise wake every waiter into another split vote).
-- Returns 1 if deleted, 0 if the key is gone or owned by another holder.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then
    redis.call('PUBLISH', ARGV[2], ARGV[1])
  end
  return 1
end
return 0
