-- A channel whose offset went backwards: a Redis failover lost writes that the old primary
-- had acknowledged and that nodes had delivered. Starts a new epoch past the offset the
-- calling node delivered, without history or idempotency keys, so that subscribers are told
-- to reload instead of silently missing new messages that would reuse those offsets.
-- KEYS: 1 meta hash, 2 history stream, 3 idem hash, 4 idem zset
-- ARGV: 1 the epoch the node delivered, 2 the last offset it delivered (the new epoch goes
--       on from the greater of it and the channel's offset), 3 the new epoch,
--       4 meta ttl s
-- Returns 1 when it started the new epoch; 0 when another node already did.
local epoch = redis.call('HGET', KEYS[1], 'e')
if epoch ~= ARGV[1] then
  return 0
end
local offset = math.max(tonumber(redis.call('HGET', KEYS[1], 'o') or '0'), tonumber(ARGV[2]))
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'e', ARGV[3], 'o', offset, 'a', offset)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
