-- Accepts one publication on a channel, atomically: dedup by idempotency key, next offset,
-- append to the recent-history stream (bounded by count; the key expires with the history
-- TTL), and SPUBLISH (sharded pub/sub, in the channel's slot) of the envelope to every
-- subscribed node.
-- KEYS: 1 meta hash {e = epoch, o = offset, a = highest offset of the epoch the archive
--       holds}, 2 history stream, 3 idem hash (key -> offset),
--       4 idem zset (key -> expiry ms), 5 the partition's archive stream
-- ARGV: 1 shard channel, 2 channel, 3 from, 4 payload tag, 5 payload, 6 now ms,
--       7 idem key ('' for none), 8 epoch to use if the channel has none, 9 history size,
--       10 history ttl s, 11 meta ttl s, 12 dedup window ms, 13 dedup max keys,
--       14 '1' to append to the archive stream, 15 archive stream bound,
--       16 '1' to ask for the archived position when the channel has none,
--       17 offset to start from when the channel has none (its archived top)
-- History keeps every entry the archive does not hold yet (offset above 'a'), past the
-- history size (up to the archive stream bound): recovery never falls between the two.
-- Returns {status, offset, epoch}: status 0 published, 1 duplicate, 2 dedup table full,
-- 3 the channel has no state (call again with its archived position), 4 archive stream full.
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  if ARGV[16] == '1' then
    return {3, 0, ''}
  end
  epoch = ARGV[8]
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', tonumber(ARGV[17]), 'a', tonumber(ARGV[17]))
end
local now = tonumber(ARGV[6])
local idem = ARGV[7]
if idem ~= '' then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
  while #expired > 0 do
    redis.call('HDEL', KEYS[3], unpack(expired))
    redis.call('ZREM', KEYS[4], unpack(expired))
    expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
  end
  local previous = redis.call('HGET', KEYS[3], idem)
  if previous then
    return {1, tonumber(previous), epoch}
  end
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[13]) then
    return {2, 0, epoch}
  end
end
if ARGV[14] == '1' and redis.call('XLEN', KEYS[5]) >= tonumber(ARGV[15]) then
  return {4, 0, epoch}
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local envelope = cmsgpack.pack({'m', ARGV[2], offset, epoch, ARGV[3], now, ARGV[4], ARGV[5]})
local keep = tonumber(ARGV[9])
if ARGV[14] == '1' then
  local unarchived = offset - tonumber(redis.call('HGET', KEYS[1], 'a') or '0')
  keep = math.max(keep, math.min(unarchived, tonumber(ARGV[15])))
end
redis.call('XADD', KEYS[2], 'MAXLEN', keep, offset .. '-0', 't', now, 'e', envelope)
redis.call('EXPIRE', KEYS[2], ARGV[10])
redis.call('EXPIRE', KEYS[1], ARGV[11])
if idem ~= '' then
  redis.call('HSET', KEYS[3], idem, offset)
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[12]), idem)
  redis.call('PEXPIRE', KEYS[3], ARGV[12])
  redis.call('PEXPIRE', KEYS[4], ARGV[12])
end
if ARGV[14] == '1' then
  redis.call('XADD', KEYS[5], '*', 'e', envelope)
end
redis.call('SPUBLISH', ARGV[1], envelope)
return {0, offset, epoch}
