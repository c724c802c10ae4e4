-- One more connection of a user on a channel, on one node.
-- KEYS: 1 node|user -> count, 2 user -> total count, 3 user -> name, 4 the node's channels
--       (channel -> count), 5 nodes with presence entries
-- ARGV: 1 node, 2 user, 3 name ('' for none), 4 channel
-- Returns 1 when it is the user's first connection on the channel anywhere.
redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 1)
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
redis.call('SADD', KEYS[5], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
end
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  return 1
end
return 0
