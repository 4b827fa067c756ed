-- Extend a lock's lease if the token still holds it (compare-and-PEXPIRE).
-- KEYS[1] = the lock. ARGV: token, ttl ms.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
