-- A scope whose identity changed (service/identity.py) drops every record of the old one
-- (fence.lua is prepended): the window, the pending records of every live slot, the audits
-- awaiting their grading, the held labels, the counters of the upper bound and covariate
-- channel and the monitor's state. Their scores and label masks were made for another
-- catalogue or router: read under the new one they would certify sets they never held.
-- The threshold and its history stay (they carry the identity they were certified for).
-- KEYS: [1] window, [2] due audits, [3] slots, [4] counters (upper bound, covariate),
-- [5] monitor, [6] the epoch counter. ARGV: pending prefix, held prefix, the newest held
-- slot, epoch. Returns how many keys it deleted.
local deleted = 0
local slots = redis.call('HGETALL', KEYS[3])
for i = 1, #slots, 2 do
  local field = slots[i]
  if string.sub(field, 1, 2) == 'b:' then
    local prefix = ARGV[1] .. string.sub(field, 3) .. ':'
    for b = 0, tonumber(slots[i + 1]) - 1 do
      deleted = deleted + redis.call('DEL', prefix .. b)
    end
  end
end
local newest = tonumber(ARGV[3])
deleted = deleted + redis.call('DEL', ARGV[2] .. newest, ARGV[2] .. (newest - 1))
return deleted + redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
