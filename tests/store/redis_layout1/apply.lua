-- One batch of writes, atomically (RedisStore.apply). Loaded after common.lua.
-- KEYS[1] = {P}:all (routes the call on Cluster). ARGV: prefix, fence key ('' = none), fence
-- token, then counted groups: tasks (id, state, action, ended score or '', active '1'/'0',
-- record), events (task id, seq, record), deleted ids, meta (kind, key, value), meta deletes
-- (kind, key). Order as in the other engines: upserts, events, deletes, meta, meta deletes.
local err = check_fence(ARGV[2], ARGV[3])
if err then return err end
local i = 4
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local id, state, action = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ended, active, record = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  i = i + 6
  -- Reindex from what is stored, so a state change moves the id between index sets.
  local tkey = unindex(id)
  redis.call('HSET', tkey, 'r', record, 's', state, 'a', action)
  redis.call('ZADD', P .. 'all', 0, id)
  redis.call('ZADD', P .. 'state:' .. state, 0, id)
  redis.call('ZADD', P .. 'action:' .. action, 0, id)
  redis.call('ZADD', P .. 'sa:' .. state .. ':' .. action, 0, id)
  if active == '1' then redis.call('ZADD', P .. 'active', 0, id) end
  if ended ~= '' then redis.call('ZADD', P .. 'ended', ended, id) end
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', P .. 'ev:' .. ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  remove(ARGV[i])
  i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', P .. 'meta:' .. ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HDEL', P .. 'meta:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
