-- Delete a lock if the token holds it, never someone else's (compare-and-DEL).
-- KEYS[1] = the lock. ARGV: token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
