-- One page of tasks in byte order of their ids (RedisStore.list_tasks, load_active), in one
-- read, so a page never holds an id whose record was removed between two round trips.
-- Terminal tasks are in their state's set and their state+action set; live tasks (any state
-- not terminal) in {P}:active only, filtered here by the state and action in their hash.
-- KEYS[1] routes the call on Cluster. ARGV: prefix, lex min, limit, action ('' = any), state
-- ('' = any), '1' for live tasks only, terminal states (space-separated), scan budget.
-- Returns the cursor ('' when the page is complete, else the id up to which every set was
-- read: the scan of live tasks spent its budget, call again after it), then the records.
local P, min, limit, action, state = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local live_only, budget = ARGV[6] == '1', tonumber(ARGV[8])
local terminal = {}
for s in string.gmatch(ARGV[7], '%S+') do terminal[#terminal + 1] = s end

-- Streams of ids in byte order: a head() that answers the next id (or nil) and its record.
local streams = {}
local function range_stream(key)
  local ids, pos = redis.call('ZRANGEBYLEX', key, min, '+', 'LIMIT', 0, limit), 1
  return {
    head = function() return ids[pos] end,
    take = function()
      local id = ids[pos]
      pos = pos + 1
      return redis.call('HGET', P .. 't:' .. id, 'r')
    end,
  }
end
-- The live tasks, those of the state and action asked for; stops when it has read
-- ``budget`` ids (blocked: the id it stopped after).
local blocked = nil
local function live_stream()
  local CHUNK = math.min(limit, budget)
  local ids, pos, from, done, scanned = {}, 1, min, false, 0
  local record = nil
  local filter = action ~= '' or state ~= ''
  local function advance()
    while true do
      local id = ids[pos]
      if id == nil then
        if done then return nil end
        if scanned >= budget then
          blocked = ids[pos - 1] or blocked
          return nil
        end
        ids = redis.call('ZRANGEBYLEX', P .. 'active', from, '+', 'LIMIT', 0, CHUNK)
        pos = 1
        done = #ids < CHUNK
        if #ids == 0 then return nil end
        from = '(' .. ids[#ids]
        id = ids[1]
      end
      scanned = scanned + 1
      if not filter then return id end
      local f = redis.call('HMGET', P .. 't:' .. id, 'r', 's', 'a')
      if f[1] and (state == '' or f[2] == state) and (action == '' or f[3] == action) then
        record = f[1]
        return id
      end
      pos = pos + 1
    end
  end
  local current = advance()
  return {
    head = function() return current end,
    take = function()
      local r = record
      if not filter then r = redis.call('HGET', P .. 't:' .. current, 'r') end
      pos = pos + 1
      current = advance()
      return r
    end,
  }
end

local is_terminal = false
for _, s in ipairs(terminal) do
  if s == state then is_terminal = true end
end
if live_only or (state ~= '' and not is_terminal) then
  streams[1] = live_stream()
else
  local states = terminal
  if state ~= '' then states = {state} end
  for _, s in ipairs(states) do
    local key = P .. 'state:' .. s
    if action ~= '' then key = P .. 'sa:' .. s .. ':' .. action end
    streams[#streams + 1] = range_stream(key)
  end
  if state == '' then streams[#streams + 1] = live_stream() end
end

-- Byte order, as ZRANGEBYLEX sorts: Lua's own < compares with the server's locale (strcoll).
local function before(a, b)
  for j = 1, math.min(#a, #b) do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local out = {''}
while #out <= limit do
  local best, id = nil, nil
  for _, stream in ipairs(streams) do
    local head = stream.head()
    if head and (id == nil or before(head, id)) then best, id = stream, head end
  end
  if blocked and (best == nil or before(blocked, id)) then
    out[1] = blocked
    break
  end
  if best == nil then break end
  local r = best.take()
  if r then out[#out + 1] = r end
end
return out
