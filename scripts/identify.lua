-- Tells whether a server is reached through more than one of a Client's
-- nodes: each node writes its index under the Client's mark, unless another
-- node wrote first.
-- KEYS[1] the Client's mark; ARGV[1] the node's index; ARGV[2] how long the
-- mark lasts, in milliseconds.
-- Returns the index of the node that wrote the mark first.
local first = redis.call('GET', KEYS[1])
if first and first ~= ARGV[1] then
  return tonumber(first)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return tonumber(ARGV[1])
