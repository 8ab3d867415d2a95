-- Shared head of route.lua and feedback.lua (prepended to them).
-- KEYS[1] pending hash, KEYS[2] window stream, KEYS[3] upper-bound counters.

-- A record enters the window once: routed, drawn for audit, every catalogue model graded.
-- Returns 1 when it entered now.
local function enter_window(maxlen, models)
  local fields = {'d', 'a', 'in', 's', 'lam'}
  for i = 1, #models do fields[#fields + 1] = 'y:' .. models[i] end
  local got = redis.call('HMGET', KEYS[1], unpack(fields))
  if not got[1] or got[2] ~= '1' or got[3] then return 0 end
  local labels = {}
  for i = 1, #models do
    local y = got[5 + i]
    if not y then return 0 end
    labels[i] = y
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
             's', got[4], 'y', table.concat(labels), 'lam', got[5])
  redis.call('HSET', KEYS[1], 'in', '1')
  return 1
end

-- A decision not drawn for audit is graded on its invoked models only. Once they all are,
-- count whether every one was wrong: an upper bound of the miss rate (it also counts
-- queries that no model could answer), shown, never used to decide anything.
local function count_invoked(models)
  local got = redis.call('HMGET', KEYS[1], 'd', 'a', 'u', 'm')
  if not got[1] or got[2] ~= '0' or got[3] then return end
  local wrong = 1
  for index in string.gmatch(got[4], '%d+') do
    local y = redis.call('HGET', KEYS[1], 'y:' .. models[tonumber(index) + 1])
    if not y then return end
    if y == '1' then wrong = 0 end
  end
  redis.call('HSET', KEYS[1], 'u', '1')
  redis.call('HINCRBY', KEYS[3], 'n', 1)
  redis.call('HINCRBY', KEYS[3], 'misses', wrong)
end
