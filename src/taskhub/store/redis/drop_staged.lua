-- A new writer's first step (RedisStore.load_active): drop the big batches a previous writer
-- staged but never committed (docs/redis.md "Big batches"). KEYS[1] = {P}:ended (routes the
-- call). ARGV: prefix, fence key ('' = none), fence token. Answers how many it dropped.
local P, fence, token = ARGV[1], ARGV[2], ARGV[3]
if fence ~= '' and redis.call('GET', fence) ~= token then
  return redis.error_reply('TASKHUB_FENCED the fence ' .. fence .. ' is held by another owner')
end
local ids = redis.call('SMEMBERS', P .. 'staging')
for _, id in ipairs(ids) do redis.call('DEL', P .. 'stage:' .. id) end
redis.call('DEL', P .. 'staging')
return #ids
