-- Puts back one (node, user) entry that Redis lost (a restart without persistence) or that
-- other nodes reaped while this node was taken for dead, up to the count the node knows.
-- Same keys as add.lua. ARGV: 1 node, 2 user, 3 name ('' for none), 4 channel, 5 '1' to
-- record the transitions in the feed, 6 now (Unix ms), 7 count
-- Returns 1 when the user was absent from the channel (a join to announce).
local field = ARGV[1] .. '|' .. ARGV[2]
local current = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local count = tonumber(ARGV[7])
if current >= count then
  return 0
end
local missing = count - current
redis.call('HSET', KEYS[1], field, count)
redis.call('HINCRBY', KEYS[4], ARGV[4], missing)
if redis.call('INCRBY', KEYS[7], missing) == missing and ARGV[5] == '1' then
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', '1000000', '*', 'k', 'channel_occupied', 'c', ARGV[4], 't', ARGV[6])
end
redis.call('SADD', KEYS[5], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
end
if redis.call('HINCRBY', KEYS[2], ARGV[2], missing) == missing then
  redis.call('ZADD', KEYS[6], 0, ARGV[2])
  if ARGV[5] == '1' then
    redis.call('XADD', KEYS[8], 'MAXLEN', '~', '1000000', '*', 'k', 'member_added', 'c', ARGV[4], 'u', ARGV[2], 't', ARGV[6])
  end
  return 1
end
return 0
