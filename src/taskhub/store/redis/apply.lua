-- One batch of writes, atomically (RedisStore.apply). Loaded after common.lua.
-- KEYS[1] = {P}:ended (routes the call on Cluster). ARGV: prefix, fence key ('' = none), fence
-- token, the known states (TaskState, space-separated), then counted groups: tasks (id,
-- state, action, ended score or '', record, event count, then seq and record per event),
-- events of tasks not upserted here (task id, event count, seq and record per event), deleted
-- ids, meta (kind, key, value), meta deletes (kind, key). Order as in the other engines:
-- upserts, events, deletes, meta, meta deletes.
--
-- Per task one HMGET and one HSET (record, index fields and the batch's events together);
-- the index sets are touched only when the state (or ended score) changed.
local err = check_fence(ARGV[2], ARGV[3])
if err then return err end
local known = {}
for s in string.gmatch(ARGV[4], '%S+') do known[s] = true end
-- HSET in slices: unpack() of a huge table would overflow Lua's C stack.
local SLICE = 512
local function hset(key, fields)
  for first = 1, #fields, SLICE do
    redis.call('HSET', key, unpack(fields, first, math.min(first + SLICE - 1, #fields)))
  end
end
local i = 5
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local id, state, action, ended = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local fields = {'r', ARGV[i + 4], 's', state, 'a', action, 'e', ended, 'v', LAYOUT}
  local k = tonumber(ARGV[i + 5])
  i = i + 6
  for _ = 1, k do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    i = i + 2
  end
  local tkey = task_key(id)
  local old_state, old_action, old_ended, layout = stored(tkey)
  if old_state and not layout then
    unindex_layout1(id, old_state, old_action)
    old_state, old_action, old_ended = false, false, false
  end
  if old_state ~= state or old_action ~= action then
    if old_state then
      redis.call('ZREM', state_key(old_state), id)
      redis.call('ZREM', sa_key(old_state, old_action), id)
    end
    redis.call('ZADD', state_key(state), 0, id)
    redis.call('ZADD', sa_key(state, action), 0, id)
    -- States outside TaskState are remembered, so that listing every task finds them.
    if not known[state] then redis.call('SADD', P .. 'states', state) end
  end
  if ended ~= (old_ended or '') then
    if ended ~= '' then
      redis.call('ZADD', ENDED, ended, id)
    else
      redis.call('ZREM', ENDED, id)
    end
  end
  hset(tkey, fields)
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local tkey, k = task_key(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local fields = {}
  for _ = 1, k do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    i = i + 2
  end
  hset(tkey, fields)
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
