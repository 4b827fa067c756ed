-- A member's heartbeat: its record (the URL, with a TTL) and its place in the member set;
-- its connection slots live as long as its record.
-- KEYS[1] = the member set, KEYS[2] = the member's record, KEYS[3] = its connection slots.
-- ARGV: instance id, URL, ttl ms.
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
