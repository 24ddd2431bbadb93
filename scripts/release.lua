-- Releases the lock only while this holder still owns it, and wakes the next
-- live waiter in the lock's queue.
-- KEYS[1] lock key; KEYS[2] the lock's queue of waiters; KEYS[3] the waiters
-- that count as alive, scored with the server time in milliseconds until
-- which they do (see enqueue.lua); KEYS[4], if given, a key that goes with
-- the lock and is deleted with it (an election's record of its leader). All
-- are in one hash slot.
-- ARGV[1] holder's value, or '' to release nothing and only wake the next
-- live waiter (a woken waiter that gave up passes its wake-up on); ARGV[2]
-- the prefix of the channels of waking Clients, or '' to release without
-- waking anyone (undoing a failed attempt's grants); ARGV[3] the holder's
-- own waiter id, or '' if it did not wait.
-- A queued waiter whose time in KEYS[3] has passed, or who is not there,
-- stopped calling: its process died without leaving the queue, and it is
-- dropped from both. The first live one is woken by publishing its id on
-- the channel of its Client, whose id starts the waiter's id up to a '.',
-- so that one release wakes one waiter and reaches one Client.
-- Returns 0 if the key is gone or owned by another holder, 1 if deleted,
-- 2 if deleted and a waiter woken, 3 if deleted but the wake-up could not be
-- published (an ACL without channel permissions, say): the waiter is then
-- put back first in the queue. With ARGV[1] '' there is nothing to delete,
-- and 1, 2 and 3 say the same of the wake-up.
if ARGV[3] ~= '' then
  redis.call('LREM', KEYS[2], 0, ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
if ARGV[1] ~= '' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
  end
  redis.call('DEL', KEYS[1])
  if KEYS[4] then
    redis.call('DEL', KEYS[4])
  end
end
if ARGV[2] == '' then
  return 1
end
local now
for _ = 1, 100 do
  local next = redis.call('LPOP', KEYS[2])
  if not next then
    return 1
  end
  if not now then -- read once, and only for a queue that has waiters
    local time = redis.call('TIME')
    now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  end
  local client = string.match(next, '^([^.]+)%.')
  local alive = tonumber(redis.call('ZSCORE', KEYS[3], next) or '0')
  if client and alive > now then
    local published = redis.pcall('PUBLISH', ARGV[2] .. client, next)
    if type(published) == 'table' and published.err then
      redis.call('LPUSH', KEYS[2], next)
      -- If the LPOP emptied the queue, the LPUSH made it anew, with no
      -- expiry: it gets the one the waiters' last call gave KEYS[3].
      local ttl = redis.call('PTTL', KEYS[3])
      if ttl > 0 and redis.call('PTTL', KEYS[2]) == -1 then
        redis.call('PEXPIRE', KEYS[2], ttl)
      end
      return 3
    end
    return 2
  end
  if alive <= now then
    redis.call('ZREM', KEYS[3], next)
  end
end
return 1
