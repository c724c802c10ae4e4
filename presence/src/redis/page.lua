-- A page of a channel's members in user-id order.
-- KEYS: 1 users in id order (sorted set, score 0), 2 user -> total count, 3 user -> name
-- ARGV: 1 the last user of the previous page ('' for the first page), 2 most users
-- Returns user, connections, name ('' for none), repeated.
local from = '-'
if ARGV[1] ~= '' then
  from = '(' .. ARGV[1]
end
local users = redis.call('ZRANGEBYLEX', KEYS[1], from, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, user in ipairs(users) do
  out[#out + 1] = user
  out[#out + 1] = redis.call('HGET', KEYS[2], user) or '0'
  out[#out + 1] = redis.call('HGET', KEYS[3], user) or ''
end
return out
