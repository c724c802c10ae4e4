-- Removes a dead node's entries from one channel.
-- KEYS: 1 node|user -> count, 2 user -> total, 3 user -> name, 4 the dead node's channels,
--       5 users in id order, 6 connections on the channel, 7 the partition's change feed
-- ARGV: 1 dead node, 2 channel, 3 '1' to record the transitions in the feed, 4 now (Unix ms)
-- Returns the users whose last connection was there (they left the channel).
local prefix = ARGV[1] .. '|'
local fields = redis.call('HGETALL', KEYS[1])
local gone = {}
local vacated = false
for i = 1, #fields, 2 do
  local field = fields[i]
  if string.sub(field, 1, #prefix) == prefix then
    local user = string.sub(field, #prefix + 1)
    redis.call('HDEL', KEYS[1], field)
    if redis.call('DECRBY', KEYS[6], tonumber(fields[i + 1])) <= 0 then
      redis.call('DEL', KEYS[6])
      vacated = true
    end
    if redis.call('HINCRBY', KEYS[2], user, -tonumber(fields[i + 1])) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('HDEL', KEYS[3], user)
      redis.call('ZREM', KEYS[5], user)
      gone[#gone + 1] = user
      if ARGV[3] == '1' then
        redis.call('XADD', KEYS[7], 'MAXLEN', '~', '1000000', '*', 'k', 'member_removed', 'c', ARGV[2], 'u', user, 't', ARGV[4])
      end
    end
  end
end
if vacated and ARGV[3] == '1' then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', '1000000', '*', 'k', 'channel_vacated', 'c', ARGV[2], 't', ARGV[4])
end
redis.call('HDEL', KEYS[4], ARGV[2])
return gone
