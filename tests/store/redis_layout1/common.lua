-- Shared by the scripts that remove or reindex a task (apply.lua, remove_ended.lua): loaded
-- in front of them. ARGV[1] is always the "{P}:" prefix (store/redis/engine.py: key layout).
local P = ARGV[1]
local function unindex(id)
  local tkey = P .. 't:' .. id
  local old = redis.call('HMGET', tkey, 's', 'a')
  if old[1] then
    redis.call('ZREM', P .. 'state:' .. old[1], id)
    if old[2] then
      redis.call('ZREM', P .. 'action:' .. old[2], id)
      redis.call('ZREM', P .. 'sa:' .. old[1] .. ':' .. old[2], id)
    end
  end
  redis.call('ZREM', P .. 'active', id)
  redis.call('ZREM', P .. 'ended', id)
  return tkey
end
local function remove(id)
  local tkey = unindex(id)
  redis.call('ZREM', P .. 'all', id)
  redis.call('DEL', tkey, P .. 'ev:' .. id)
end
local function check_fence(key, token)
  -- Before any write: a fenced-out writer changes nothing at all.
  if key ~= '' and redis.call('GET', key) ~= token then
    return redis.error_reply('TASKHUB_FENCED the fence ' .. key .. ' is held by another owner')
  end
  return nil
end
