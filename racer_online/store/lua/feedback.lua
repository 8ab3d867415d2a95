-- Merge graded labels into pending records; the first label of a model wins. ARGV after
-- the catalogue, per event: the number of labels c, then c model/label pairs. Returns the
-- outcome of each event as its first letter: entered, joined, held, duplicate, conflict.
local function merge(pending, a, count)
  local fresh = redis.call('EXISTS', pending) == 0
  local added, conflict = 0, false
  for i = a, a + 2 * count - 1, 2 do
    local field = 'y:' .. ARGV[i]
    local old = redis.call('HGET', pending, field)
    if not old then
      redis.call('HSET', pending, field, ARGV[i + 1])
      added = added + 1
    elseif old ~= ARGV[i + 1] then
      conflict = true
    end
  end
  if fresh then redis.call('PEXPIRE', pending, ttl) end  -- held until its query comes
  if redis.call('HEXISTS', pending, 'd') == 0 then
    return added > 0 and 'held' or (conflict and 'conflict' or 'duplicate')
  end
  count_invoked(pending)
  if enter_window(pending) == 1 then return 'entered' end
  if conflict then return 'conflict' end
  return added > 0 and 'joined' or 'duplicate'
end

local out, a = {}, first_item
for q = first_key, #KEYS do
  local count = tonumber(ARGV[a])
  out[#out + 1] = string.sub(merge(KEYS[q], a + 1, count), 1, 1)
  a = a + 1 + 2 * count
end
return table.concat(out)
