-- One page of an index (RedisStore.list_tasks, load_active): one read, so a page never holds
-- an id whose record was removed between two round trips.
-- KEYS[1] = the index zset. ARGV: prefix, lex min, limit.
local P = ARGV[1]
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], '+', 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HGET', P .. 't:' .. id, 'r')
  if r then out[#out + 1] = r end
end
return out
