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
if redis.call('DECR', KEYS[7]) <= 0 then
  redis.call('DEL', KEYS[7])
end
if redis.call('HINCRBY', KEYS[4], ARGV[4], -1) <= 0 then
  redis.call('HDEL', KEYS[4], ARGV[4])
end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[6], ARGV[2])
  return 1
end
return 0
