-- Sets a semaphore's slot again for its holder on a node that lost it, if
-- the slot is free there, and never over another holder's; and renews the
-- semaphore's limit with it, as a grant does, unless the node stores
-- another limit, which is left for the next grant to report.
-- KEYS[1] the slot; KEYS[2] the semaphore's limit.
-- ARGV[1] holder's value; ARGV[2] what is left of the holder's validity, in
-- milliseconds; ARGV[3] the holder's number of permits; ARGV[4] how long the
-- limit lasts after a call, in milliseconds.
-- Returns 1 if the slot holds the value, 0 if another holder has it.
local held = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not held and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local limit = redis.call('GET', KEYS[2])
if not limit or limit == ARGV[3] then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
return 1
