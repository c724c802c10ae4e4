-- Takes or renews the change feed's lead: one node at a time sends the webhooks.
-- KEYS: 1 the leader key
-- ARGV: 1 node, 2 lease (ms)
-- Returns 1 when `node` holds the lead (taken or renewed), 0 when another node does.
local current = redis.call('GET', KEYS[1])
if not current or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
