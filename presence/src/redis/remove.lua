-- One connection fewer (same keys and arguments as add.lua, name unused).
-- Returns 1 when it was the user's last connection on the channel anywhere; 0 otherwise,
-- and 0 for an entry already gone (reaped after this node was taken for dead).
local field = ARGV[1] .. '|' .. ARGV[2]
local n = redis.call('HINCRBY', KEYS[1], field, -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], field)
  if n < 0 then
    return 0
  end
end
local vacated = false
if redis.call('DECR', KEYS[7]) <= 0 then
  redis.call('DEL', KEYS[7])
  vacated = true
end
if redis.call('HINCRBY', KEYS[4], ARGV[4], -1) <= 0 then
  redis.call('HDEL', KEYS[4], ARGV[4])
end
local last = 0
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[6], ARGV[2])
  last = 1
  if ARGV[5] == '1' then
    redis.call('XADD', KEYS[8], 'MAXLEN', '~', '1000000', '*', 'k', 'member_removed', 'c', ARGV[4], 'u', ARGV[2], 't', ARGV[6])
  end
end
if vacated and ARGV[5] == '1' then
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', '1000000', '*', 'k', 'channel_vacated', 'c', ARGV[4], 't', ARGV[6])
end
return last
