-- A task's events (RedisStore.get_events), in one read: the task's hash, whose fields g<n>
-- (one batch's events) and <seq> (layout 2's, one event each) are its events, and layout
-- 1's event hash of the task, {P}:ev:<id>.
-- KEYS[1] = {P}:t:<id>, KEYS[2] = {P}:ev:<id>.
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
