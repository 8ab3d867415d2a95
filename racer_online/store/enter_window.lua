-- Shared tail of route.lua and feedback.lua (concatenated in front of them).
-- A record enters the window once: routed, drawn for audit, every catalogue model graded.
-- KEYS[1] pending hash, KEYS[2] window stream. Returns 1 when it entered now.
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
