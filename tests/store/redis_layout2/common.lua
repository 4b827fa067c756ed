-- Shared by the scripts that write or remove tasks (apply.lua, remove_ended.lua): loaded in
-- front of them, after args.lua or staged.lua (which give ARGS, read here as ARGV).
-- ARGV[1] is always the "{P}:" prefix, ARGV[4] the terminal states (space-separated). Key
-- names: store/redis/keys.py.
-- Globals read through locals: a global is a table lookup each time (~400 instructions a
-- redis.call, measured with redis_script_bench.py --valgrind).
local ARGV, call, unpack, tonumber = ARGS, redis.call, unpack, tonumber
local P = ARGV[1]
local TERMINAL = {}
for s in string.gmatch(ARGV[4], '%S+') do TERMINAL[s] = true end
local ACTIVE, ENDED = P .. 'active', P .. 'ended'
local function task_key(id) return P .. 't:' .. id end
local function state_key(state) return P .. 'state:' .. state end
local function sa_key(state, action) return P .. 'sa:' .. state .. ':' .. action end
-- A task's index fields as stored: state, action, ended score ('' when none). A hash with a
-- state but no e field is layout 1's, which also kept the all and action sets, and the state
-- sets of live states.
local function stored(tkey)
  return unpack(call('HMGET', tkey, 's', 'a', 'e'))
end
-- Take a layout-1 task out of every set layout 1 kept for it.
local function unindex_layout1(id, state, action)
  call('ZREM', state_key(state), id)
  if action then
    call('ZREM', P .. 'action:' .. action, id)
    call('ZREM', sa_key(state, action), id)
  end
  call('ZREM', ACTIVE, id)
  call('ZREM', ENDED, id)
  call('ZREM', P .. 'all', id)
end
local function remove(id)
  local tkey = task_key(id)
  local state, action, ended = stored(tkey)
  if state and not ended then
    unindex_layout1(id, state, action)
  elseif state and TERMINAL[state] then
    call('ZREM', state_key(state), id)
    call('ZREM', sa_key(state, action), id)
    if ended ~= '' then call('ZREM', ENDED, id) end
  elseif state then
    call('ZREM', ACTIVE, id)
  end
  call('DEL', tkey, P .. 'ev:' .. id)
end
local function check_fence(key, token)
  -- Before any write: a fenced-out writer changes nothing at all.
  if key ~= '' and call('GET', key) ~= token then
    return redis.error_reply('TASKHUB_FENCED the fence ' .. key .. ' is held by another owner')
  end
  return nil
end
