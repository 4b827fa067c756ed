-- Set this member's count of a service's connections (0 removes it).
-- KEYS[1] = the set of members with slots, KEYS[2] = this member's slots.
-- ARGV: instance id, service, held, ttl ms.
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('SADD', KEYS[1], ARGV[1])
else
  redis.call('HDEL', KEYS[2], ARGV[2])
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 1
