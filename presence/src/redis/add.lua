-- One more connection of a user on a channel, on one node.
-- KEYS: 1 node|user -> count, 2 user -> total count, 3 user -> name, 4 the node's channels
--       (channel -> count), 5 nodes with presence entries, 6 users in id order (a sorted set
--       of score 0, for paging), 7 connections on the channel, 8 the partition's change feed
-- ARGV: 1 node, 2 user, 3 name ('' for none), 4 channel, 5 '1' to record the transitions in
--       the feed, 6 now (Unix ms)
-- Returns 1 when it is the user's first connection on the channel anywhere.
redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 1)
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
local conns = redis.call('INCR', KEYS[7])
redis.call('SADD', KEYS[5], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
end
if ARGV[5] == '1' and conns == 1 then
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', '1000000', '*', 'k', 'channel_occupied', 'c', ARGV[4], 't', ARGV[6])
end
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  redis.call('ZADD', KEYS[6], 0, ARGV[2])
  if ARGV[5] == '1' then
    redis.call('XADD', KEYS[8], 'MAXLEN', '~', '1000000', '*', 'k', 'member_added', 'c', ARGV[4], 'u', ARGV[2], 't', ARGV[6])
  end
  return 1
end
return 0
