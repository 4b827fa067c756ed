-- One batch of writes, atomically (RedisStore.apply). Loaded after common.lua.
-- KEYS[1] = {P}:ended (routes the call on Cluster). ARGV: prefix, fence key ('' = none), fence
-- token, terminal states, then counted groups: tasks (id, state, action, ended
-- score or '', record, event count, then seq and record per event), events of tasks not
-- upserted here (task id, event count, seq and record per event), deleted ids, meta (kind,
-- key, value), meta deletes (kind, key). Order as in the other engines: upserts, events,
-- deletes, meta, meta deletes.
--
-- Each Redis call a script makes costs ~1 us besides its work, so the index sets are written
-- with one call per set for the whole batch, and a task's stored state is read only when the
-- active set cannot tell it: live tasks are in {P}:active alone, terminal ones in their
-- state and state+action sets. A task is then one HSET (record, index fields and events).
local err = check_fence(ARGV[2], ARGV[3])
if err then return err end
-- Calls with many arguments in slices: unpack() of a huge table overflows Lua's C stack.
local SLICE = 512
local function sliced(command, key, args)
  if #args <= SLICE then return call(command, key, unpack(args)) end
  local out = {}
  for first = 1, #args, SLICE do
    local upto = math.min(first + SLICE - 1, #args)
    local reply = call(command, key, unpack(args, first, upto))
    if type(reply) == 'table' then
      for _, v in ipairs(reply) do out[#out + 1] = v end
    end
  end
  return out
end

-- Once, on a store layout 1 wrote: its live tasks leave the sets layout 2 does not keep for
-- live tasks (layout 1's terminal tasks leave theirs when they are removed).
if call('EXISTS', P .. 'all') == 1 then
  for _, id in ipairs(call('ZRANGE', ACTIVE, 0, -1)) do
    local tkey = task_key(id)
    local state, action, ended = stored(tkey)
    if state and not ended then
      call('ZREM', state_key(state), id)
      if action then
        call('ZREM', sa_key(state, action), id)
        call('ZREM', P .. 'action:' .. action, id)
      end
      call('HSET', tkey, 'e', '')
    end
  end
  call('UNLINK', P .. 'all')
end

local i = 5
local n = tonumber(ARGV[i]); i = i + 1
-- A count as Lua reads it: tonumber() is strtod(), ~1k instructions; most counts are small.
local COUNT = {['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4, ['5'] = 5, ['6'] = 6}
local function count(arg) return COUNT[arg] or tonumber(arg) end
-- Where each task's arguments start in ARGV (its events' are 6 further on, and their count
-- is its sixth), its id, and which of a task's writes is its last (a task given twice is
-- indexed by its last record, and every write's fields are set in order).
local at, ids, latest = {}, {}, {}
for t = 1, n do
  local id = ARGV[i]
  at[t], ids[t] = i, id
  latest[id] = t
  i = i + 6 + 2 * count(ARGV[i + 5])
end

-- The index writes of the batch, one call per set. Scores are strings: a Lua number would be
-- formatted with sprintf for every member.
local adds, order = {}, {}
local function add(key, score, id)
  local members = adds[key]
  if members == nil then
    members = {}
    adds[key] = members
    order[#order + 1] = key
  end
  members[#members + 1] = score
  members[#members + 1] = id
end
local gone = {} -- ids leaving the active set
-- The batch's terminal index keys, each built once (a concatenation is a new Lua string).
local state_keys, sa_keys = {}, {}
local function index_terminal(id, state, action, ended)
  local by_action = sa_keys[state]
  if by_action == nil then
    by_action = {}
    sa_keys[state], state_keys[state] = by_action, state_key(state)
  end
  local sa = by_action[action]
  if sa == nil then
    sa = sa_key(state, action)
    by_action[action] = sa
  end
  add(state_keys[state], '0', id)
  add(sa, '0', id)
  if ended ~= '' then add(ENDED, ended, id) end
end

if n > 0 then
  local live = sliced('ZMSCORE', ACTIVE, ids)
  -- Tasks not live: new, or terminal already. Only when some of them exist is each read.
  local others, keys, tkeys = {}, {}, {}
  for t = 1, n do
    local id, state = ids[t], ARGV[at[t] + 1]
    if latest[id] ~= t then
      -- an earlier write of a task written again in this batch: its fields only
    elseif live[t] then
      if TERMINAL[state] then
        gone[#gone + 1] = id
        index_terminal(id, state, ARGV[at[t] + 2], ARGV[at[t] + 3])
      end
    else
      local key = task_key(id)
      others[#others + 1], keys[#keys + 1], tkeys[t] = t, key, key
    end
  end
  local existing = 0
  for first = 1, #keys, SLICE do
    local upto = math.min(first + SLICE - 1, #keys)
    existing = existing + call('EXISTS', unpack(keys, first, upto))
  end
  for j, t in ipairs(others) do
    local id, state, action, ended = ids[t], ARGV[at[t] + 1], ARGV[at[t] + 2], ARGV[at[t] + 3]
    local old_state, old_action, old_ended = false, false, false
    if existing > 0 then
      old_state, old_action, old_ended = stored(keys[j])
      if old_state and not old_ended then
        unindex_layout1(id, old_state, old_action)
        old_state, old_action, old_ended = false, false, false
      end
    end
    local same = old_state == state and old_action == action
    if old_state and not same then
      call('ZREM', state_key(old_state), id)
      call('ZREM', sa_key(old_state, old_action), id)
    end
    if old_ended and old_ended ~= '' and (ended == '' or not TERMINAL[state]) then
      call('ZREM', ENDED, id)
    end
    if not TERMINAL[state] then
      add(ACTIVE, '0', id)
    elseif not same then
      index_terminal(id, state, action, ended)
    elseif ended ~= '' and ended ~= old_ended then
      add(ENDED, ended, id)
    end
  end
  if #gone > 0 then sliced('ZREM', ACTIVE, gone) end
  for _, key in ipairs(order) do sliced('ZADD', key, adds[key]) end
  for t = 1, n do
    local a = at[t]
    local key = tkeys[t] or task_key(ids[t])
    local s, last = a + 6, a + 5 + 2 * count(ARGV[a + 5])
    local e = math.min(last, s + SLICE - 1)
    -- The record, the index fields and the first events (ARGV slices: no table built).
    call('HSET', key, 'r', ARGV[a + 4], 's', ARGV[a + 1], 'a', ARGV[a + 2],
      'e', ARGV[a + 3], unpack(ARGV, s, e))
    for more = e + 1, last, SLICE do
      call('HSET', key, unpack(ARGV, more, math.min(last, more + SLICE - 1)))
    end
  end
end

n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local key, k = task_key(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  for more = i, i + 2 * k - 1, SLICE do
    call('HSET', key, unpack(ARGV, more, math.min(i + 2 * k - 1, more + SLICE - 1)))
  end
  i = i + 2 * k
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  remove(ARGV[i])
  i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  call('HSET', P .. 'meta:' .. ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  call('HDEL', P .. 'meta:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
