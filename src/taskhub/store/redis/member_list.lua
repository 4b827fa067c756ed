-- The live members as {id, url, id, url, ...}; ids whose record expired leave the set.
-- KEYS[1] = the member set. ARGV[1] = the records' key prefix (same hash tag as the set).
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local url = redis.call('GET', ARGV[1] .. id)
  if url then
    out[#out + 1] = id
    out[#out + 1] = url
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
