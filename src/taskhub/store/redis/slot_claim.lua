-- Claim a connection slot: set this member's count of a service's connections to `held` if
-- the other live members hold at most `limit - held`; else write nothing.
-- KEYS[1] = the set of members with slots, KEYS[2] = this member's slots (a hash service ->
-- count, with the member's TTL). ARGV: instance id, service, held, limit, ttl ms, the slot
-- records' key prefix (same hash tag). Returns false when set, else the others' count.
local others = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if id ~= ARGV[1] then
    local key = ARGV[6] .. id
    if redis.call('EXISTS', key) == 1 then
      others = others + tonumber(redis.call('HGET', key, ARGV[2]) or '0')
    else
      redis.call('SREM', KEYS[1], id)  -- expired with its member: it counts no more
    end
  end
end
if others + tonumber(ARGV[3]) > tonumber(ARGV[4]) then
  return others
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[1], ARGV[1])
return false
