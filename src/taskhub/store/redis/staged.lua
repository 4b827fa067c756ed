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
-- A piece staged by taskhub before the batch header (batches.batch_args), which a new leader
-- may finish after an upgrade: its fifth argument is a decimal count where a header's first
-- byte is a MessagePack array's. Rebuilt here as the header (a table) and the values.
local b5 = string.byte(ARGS[5])
if b5 and b5 >= 48 and b5 <= 57 then
  local A, H, V, i = ARGS, {}, {ARGS[1], ARGS[2], ARGS[3], ARGS[4], false}, 5
  local function field(x) H[#H + 1] = x end
  local function count()
    local k = tonumber(A[i])
    field(k)
    i = i + 1
    return k
  end
  local function events(k) -- seq, record pairs
    for _ = 1, k do
      field(A[i])
      V[#V + 1] = A[i + 1]
      i = i + 2
    end
  end
  for _ = 1, count() do -- id, state, action, ended, record, event count, events
    field(A[i]); field(A[i + 1]); field(A[i + 2]); field(A[i + 3])
    V[#V + 1] = A[i + 4]
    i = i + 5
    events(count())
  end
  for _ = 1, count() do -- task id, event count, events
    field(A[i])
    i = i + 1
    events(count())
  end
  for _ = 1, count() do field(A[i]); i = i + 1 end -- deleted ids
  for _ = 1, count() do -- kind, key, value
    field(A[i]); field(A[i + 1])
    V[#V + 1] = A[i + 2]
    i = i + 3
  end
  for _ = 1, count() do field(A[i]); field(A[i + 1]); i = i + 2 end -- meta deletes
  V[5] = H
  ARGS = V
end
-- This writer's fence, not the stager's: the next leader finishes what its predecessor
-- committed.
ARGS[2], ARGS[3] = fence, token
