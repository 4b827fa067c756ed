-- Commit a big batch staged in {P}:stage:<id> (RedisStore.apply, docs/redis.md "Big
-- batches"): from here on it is written whole, by this writer (staged.lua, piece by piece) or
-- by the next leader when it restores. KEYS[1] = {P}:ended (routes the call). ARGV: prefix,
-- fence key ('' = none), fence token, batch id, the pieces' lengths ("n1 n2 ..."), their sum.
local P, fence, token, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if fence ~= '' and redis.call('GET', fence) ~= token then
  return redis.error_reply('TASKHUB_FENCED the fence ' .. fence .. ' is held by another owner')
end
local staged = redis.call('LLEN', P .. 'stage:' .. id)
if staged ~= tonumber(ARGV[6]) then
  return redis.error_reply('ERR batch ' .. id .. ' was staged with ' .. ARGV[6] ..
    ' arguments but ' .. staged .. ' are there: not committed')
end
redis.call('HSET', P .. 'committed', id, ARGV[5])
redis.call('SREM', P .. 'staging', id)
return 1
