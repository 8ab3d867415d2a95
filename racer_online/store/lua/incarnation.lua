-- Common head of every script that acts on what a worker holds in memory (prepended to
-- route.lua, feedback.lua, lease.lua and current.lua). A scope's incarnation is the Redis
-- time (microseconds) at which its state began: created by the first call that finds none,
-- which happens at a scope's first start and again whenever Redis lost the scope's state
-- (FLUSHALL, a restart without persistence, a node replaced). A caller passes the
-- incarnation its memory comes from ('0': none yet, nothing to compare); another one means
-- that memory describes records Redis no longer holds, and the call is refused before it
-- reads or writes anything else.
local function incarnation(key)
  local current = redis.call('GET', key)
  if not current then
    local t = redis.call('TIME')
    current = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('SET', key, current)
  end
  return current
end

local function incarnation_refused(key, expected)
  local current = incarnation(key)
  if expected ~= '0' and expected ~= current then
    return redis.error_reply('INCARNATION ' .. current .. ' ' .. key .. ' (expected ' .. expected .. ')')
  end
end
