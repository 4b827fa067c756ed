-- Retention (RedisStore.remove_ended_before). Loaded after common.lua.
-- KEYS[1] = {P}:ended. ARGV: prefix, fence key, fence token, terminal states, "(<at>"
-- (exclusive), limit.
-- Without script flags on purpose: it only deletes, so it runs on a full Redis too and frees
-- memory.
local err = check_fence(ARGV[2], ARGV[3])
if err then return err end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[5], 'LIMIT', 0, ARGV[6])
for _, id in ipairs(ids) do remove(id) end
return ids
