-- Take a partition's lease if it is free, with a new fencing token "<epoch> <holder>".
-- KEYS[1] = the lease, KEYS[2] = its epoch counter (same hash tag). ARGV: holder, ttl ms.
-- The counter never expires: every take of the partition gets a larger epoch than the last.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local token = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
