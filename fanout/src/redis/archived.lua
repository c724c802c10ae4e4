-- Records how far channels' publications have reached the archive, after the archiver
-- committed them: the publish script then lets history trim what the archive holds.
-- KEYS: the channels' meta hashes (one partition: one hash slot)
-- ARGV: per key, 2 values: the epoch of the committed publications, the highest offset
--       committed
-- A channel whose epoch changed since, or whose state is gone, is left alone; the mark
-- only rises. Returns how many marks rose.
local raised = 0
for i, key in ipairs(KEYS) do
  local epoch = ARGV[2 * i - 1]
  local offset = tonumber(ARGV[2 * i])
  if redis.call('HGET', key, 'e') == epoch then
    local mark = tonumber(redis.call('HGET', key, 'a') or '0')
    if offset > mark then
      redis.call('HSET', key, 'a', offset)
      raised = raised + 1
    end
  end
end
return raised
