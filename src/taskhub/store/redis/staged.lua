-- Apply the next piece of a big batch (RedisStore.apply, docs/redis.md "Big batches"), then
-- apply.lua on it (loaded after this and common.lua). The batch's pieces were staged, in
-- order, in the list {P}:stage:<id> and committed with their lengths ("n1 n2 ...") in the
-- hash {P}:committed; this takes the first piece off both, so each piece is applied once.
-- KEYS[1] = {P}:ended (routes the call). ARGV: prefix, fence key ('' = none), fence token,
-- batch id. Answers 0 when the batch has no piece left (1 from apply.lua otherwise).
local P, fence, token, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- Before any write, as check_fence: a fenced-out writer changes nothing at all.
if fence ~= '' and redis.call('GET', fence) ~= token then
  return redis.error_reply('TASKHUB_FENCED the fence ' .. fence .. ' is held by another owner')
end
local committed, stage = P .. 'committed', P .. 'stage:' .. id
local lengths = redis.call('HGET', committed, id)
if not lengths then return 0 end
local first, rest = string.match(lengths, '^(%d+) ?(.*)$')
local n = tonumber(first)
local ARGS = redis.call('LRANGE', stage, 0, n - 1)
if rest == '' then
  redis.call('HDEL', committed, id)
  redis.call('DEL', stage)
else
  redis.call('HSET', committed, id, rest)
  redis.call('LTRIM', stage, n, -1)
end
-- This writer's fence, not the stager's: the next leader finishes what its predecessor
-- committed.
ARGS[2], ARGS[3] = fence, token
