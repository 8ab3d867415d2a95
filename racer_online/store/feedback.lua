-- Merge graded labels into a pending record; the first label of a model wins.
-- ARGV: ttl_ms, window maxlen, number of models n, models (n), then model/label pairs.
-- Returns the outcome: entered, joined, held, duplicate or conflict.
local n = tonumber(ARGV[3])
local models = {}
for i = 1, n do models[i] = ARGV[3 + i] end
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local added, conflict = 0, false
for i = 4 + n, #ARGV, 2 do
  local field = 'y:' .. ARGV[i]
  local old = redis.call('HGET', KEYS[1], field)
  if not old then
    redis.call('HSET', KEYS[1], field, ARGV[i + 1])
    added = added + 1
  elseif old ~= ARGV[i + 1] then
    conflict = true
  end
end
if fresh then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end  -- held until its query comes
if redis.call('HEXISTS', KEYS[1], 'd') == 0 then
  return added > 0 and 'held' or (conflict and 'conflict' or 'duplicate')
end
count_invoked(models)
if enter_window(ARGV[2], models) == 1 then return 'entered' end
if conflict then return 'conflict' end
return added > 0 and 'joined' or 'duplicate'
