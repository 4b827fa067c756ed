-- One batch of writes, atomically (RedisStore.apply). Loaded after common.lua.
-- KEYS[1] = {P}:ended (routes the call on Cluster). ARGV: prefix, fence key ('' = none), fence
-- token, terminal states, the batch's header, then its values (batches.batch_args). The header
-- is one MessagePack array: 'E', then the small fields in counted groups: tasks (id, state,
-- action, ended score or '', 1 when the task has events here else 0), tasks whose events
-- come without their record (id), deleted ids, meta (kind, key), meta deletes (kind, key).
-- The values, in the header's order: each task's record then its events (one JSON array),
-- the other tasks' events (one array each), each meta entry's value. (staged.lua may hand
-- the header over as a table already, and a header without the 'E' is an older taskhub's:
-- regroup below.) Order as in the other engines: upserts, events, deletes, meta, meta
-- deletes.
--
-- Each Redis call a script makes costs ~1 us besides its work, so the index sets are written
-- with one call per set for the whole batch, and a task's stored state is read only when the
-- active set cannot tell it: live tasks are in {P}:active alone, terminal ones in their
-- state and state+action sets. A task is then one HSET (record, index fields and events).
--
-- A task's events of one batch are one field of its hash, g<n>, n this batch's number from
-- the counter {P}:writes: a reader takes the fields in that order and a later event of a seq
-- replaces an earlier one (RedisStore.get_events). A field and an argument per event cost
-- redis-server (and the hub's packing) more than the array (docs/performance.md).
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

local H = ARGV[5]
if type(H) == 'string' then H = cmsgpack.unpack(H) end

-- A batch an older taskhub staged (a big batch's piece that a new leader finishes after an
-- upgrade): its header gives each event a seq and a value of its own. Rebuilt here as this
-- version's header and values, a task's events as one JSON array.
local function regroup(old, A)
  local new, vals, o, w = {'E'}, {A[1], A[2], A[3], A[4], false}, 1, 6
  local function field(x) new[#new + 1] = x end
  local function value(x) vals[#vals + 1] = x end
  local function events(k) -- k events (seqs from old[o], values from A[w]) as one value
    if k > 0 then value('[' .. table.concat(A, ',', w, w + k - 1) .. ']') end
    o, w = o + k, w + k
  end
  local count = old[o]
  field(count); o = o + 1
  for _ = 1, count do -- id, state, action, ended, event count, seqs; record, events
    local k = old[o + 4]
    field(old[o]); field(old[o + 1]); field(old[o + 2]); field(old[o + 3])
    field(k > 0 and 1 or 0)
    value(A[w])
    o, w = o + 5, w + 1
    events(k)
  end
  count = old[o]
  field(count); o = o + 1
  for _ = 1, count do -- task id, event count, seqs; events
    local k = old[o + 1]
    field(old[o])
    o = o + 2
    events(k)
  end
  count = old[o]
  field(count); o = o + 1
  for _ = 1, count do field(old[o]); o = o + 1 end -- deleted ids
  count = old[o]
  field(count); o = o + 1
  for _ = 1, count do field(old[o]); field(old[o + 1]); value(A[w]); o, w = o + 2, w + 1 end
  count = old[o]
  field(count); o = o + 1
  for _ = 1, count do field(old[o]); field(old[o + 1]); o = o + 2 end -- meta deletes
  vals[5] = new
  return new, vals
end
if H[1] ~= 'E' then H, ARGV = regroup(H, ARGV) end

-- This batch's field for the events of each task it writes, g<n>: n from the counter, taken
-- at the first task with events (a batch without any leaves the counter alone). An integer,
-- as the reader orders the fields by it.
local G = nil
local function group()
  if G == nil then G = string.format('g%d', call('INCR', P .. 'writes')) end
  return G
end
local h, v = 3, 6 -- the next header field, the next value
local n = H[2]
-- Where each task's fields start in the header and its values in ARGV (its record, then its
-- events if it has any here), its id, and which of a task's writes is its last (a task given
-- twice is indexed by its last record, and every write's fields are set in order).
local at, vat, ids, latest = {}, {}, {}, {}
for t = 1, n do
  local id = H[h]
  at[t], vat[t], ids[t] = h, v, id
  latest[id] = t
  v = v + 1 + H[h + 4]
  h = h + 5
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
    local id, state = ids[t], H[at[t] + 1]
    if latest[id] ~= t then
      -- an earlier write of a task written again in this batch: its fields only
    elseif live[t] then
      if TERMINAL[state] then
        gone[#gone + 1] = id
        index_terminal(id, state, H[at[t] + 2], H[at[t] + 3])
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
    local a = at[t]
    local id, state, action, ended = ids[t], H[a + 1], H[a + 2], H[a + 3]
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
    local a, r = at[t], vat[t]
    local key = tkeys[t] or task_key(ids[t])
    -- The record, the index fields and the task's events: one HSET.
    if H[a + 4] == 1 then
      call('HSET', key, 'r', ARGV[r], 's', H[a + 1], 'a', H[a + 2], 'e', H[a + 3],
        G or group(), ARGV[r + 1])
    else
      call('HSET', key, 'r', ARGV[r], 's', H[a + 1], 'a', H[a + 2], 'e', H[a + 3])
    end
  end
end

n = H[h]; h = h + 1
for _ = 1, n do
  call('HSET', task_key(H[h]), G or group(), ARGV[v])
  h, v = h + 1, v + 1
end
n = H[h]; h = h + 1
for _ = 1, n do
  remove(H[h])
  h = h + 1
end
n = H[h]; h = h + 1
for _ = 1, n do
  call('HSET', P .. 'meta:' .. H[h], H[h + 1], ARGV[v])
  h, v = h + 2, v + 1
end
n = H[h]; h = h + 1
for _ = 1, n do
  call('HDEL', P .. 'meta:' .. H[h], H[h + 1])
  h = h + 2
end
return 1
