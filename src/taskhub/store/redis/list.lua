-- One page of tasks in byte order of their ids (RedisStore.list_tasks, load_active): the
-- merge of the index sets of the states asked for, in one read, so a page never holds an id
-- whose record was removed between two round trips. Every task is in one state set.
-- KEYS[1] routes the call on Cluster. ARGV: prefix, lex min, limit, action ('' = any), '1'
-- to add the states outside TaskState that apply.lua recorded in {P}:states, then the states.
local P, min, limit, action = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local states = {}
for j = 6, #ARGV do states[#states + 1] = ARGV[j] end
if ARGV[5] == '1' then
  for _, s in ipairs(redis.call('SMEMBERS', P .. 'states')) do states[#states + 1] = s end
end
local lists, pos = {}, {}
for _, s in ipairs(states) do
  local key = P .. 'state:' .. s
  if action ~= '' then key = P .. 'sa:' .. s .. ':' .. action end
  local ids = redis.call('ZRANGEBYLEX', key, min, '+', 'LIMIT', 0, limit)
  if #ids > 0 then
    lists[#lists + 1] = ids
    pos[#lists] = 1
  end
end
-- Byte order, as ZRANGEBYLEX sorts: Lua's own < compares with the server's locale (strcoll).
local function before(a, b)
  for j = 1, math.min(#a, #b) do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local out = {}
while #out < limit do
  local best, id = nil, nil
  for k = 1, #lists do
    local head = lists[k][pos[k]]
    if head and (id == nil or before(head, id)) then best, id = k, head end
  end
  if best == nil then break end
  pos[best] = pos[best] + 1
  local r = redis.call('HGET', P .. 't:' .. id, 'r')
  if r then out[#out + 1] = r end
end
return out
