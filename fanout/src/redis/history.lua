-- Reads a channel's position and a slice of its recent history, atomically; gives an unknown
-- channel its epoch (offset 0), so that the epoch a subscriber learns is the one publishes use.
-- KEYS: 1 meta hash, 2 history stream
-- ARGV: 1 since (exclusive; '' for the newest), 2 limit, 3 epoch to use if none,
--       4 meta ttl s, 5 oldest acceptable timestamp ms (history TTL), 6 before (exclusive
--       upper bound; '' for none), 7 '1' to ask for the archived position when the channel
--       has none, 8 offset to start from when it has none (its archived top)
-- Returns {offset, epoch, envelope...} with envelopes oldest first, or {-1} when asked to
-- and the channel has no state.
local epoch = redis.call('HGET', KEYS[1], 'e')
local offset = 0
if not epoch then
  if ARGV[7] == '1' then
    return {-1}
  end
  epoch = ARGV[3]
  offset = tonumber(ARGV[8])
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', offset, 'a', offset)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
else
  offset = tonumber(redis.call('HGET', KEYS[1], 'o'))
end
-- Entries the archive does not hold yet (above 'a') are given whatever their age.
local archived = tonumber(redis.call('HGET', KEYS[1], 'a') or offset)
local out = {offset, epoch}
local limit = tonumber(ARGV[2])
if limit > 0 then
  local oldest = tonumber(ARGV[5])
  -- Entries are {id = '<offset>-0', {'t', ts, 'e', envelope}}; those older than the TTL
  -- are left out, unless the archive does not hold them yet.
  local function collect(entries, first, last, step)
    for i = first, last, step do
      local fields = entries[i][2]
      if tonumber(fields[2]) >= oldest
          or tonumber(string.match(entries[i][1], '^%d+')) > archived then
        out[#out + 1] = fields[4]
      end
    end
  end
  local upper = '+'
  if ARGV[6] ~= '' then
    upper = '(' .. ARGV[6] .. '-0'
  end
  if ARGV[1] == '' then
    local entries = redis.call('XREVRANGE', KEYS[2], upper, '-', 'COUNT', limit)
    collect(entries, #entries, 1, -1)
  else
    local entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[1] .. '-0', upper, 'COUNT', limit)
    collect(entries, 1, #entries, 1)
  end
end
return out
