-- Ended tasks before a time (RedisStore.list_ended_before), oldest first.
-- KEYS[1] = {P}:ended. ARGV: prefix, "(<at>", limit.
local P = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HGET', P .. 't:' .. id, 'r')
  if r then out[#out + 1] = r end
end
return out
