-- Store each routed decision of a batch once. ARGV after the head, one item per query: the
-- query id's hash (8 bytes), the decision's slot (u32), the end of its feedback horizon
-- (f64, s) and how many slots back to look for a first decision (u32: 2 for a query
-- just sent, back to its send time for a replay), then the packed record (no labels yet). Returns one letter per query, n
-- (stored now), e (stored now and held labels completed it: it entered the window) or r
-- (stored before, in the slots searched: a redelivery), then the stored record of
-- each r, in order: with the query, it rebuilds the first decision. An audited record not
-- complete yet joins the audits, scored by the end of its horizon, for the leader's sweep.
-- Calls that do not depend on the record (expiries, counts, held labels that are not
-- there) are made once per batch: they were half of this script's work. Stored decisions
-- with the covariate flags are added up in the counters, once per batch too.
local codes, firsts = {}, {}
local expiring, added, held_present = {}, {}, {}
local watched, low_top = 0, 0

local function held_value(held_key, hash)
  if held_present[held_key] == nil then
    held_present[held_key] = redis.call('EXISTS', held_key) == 1
  end
  return held_present[held_key] and redis.call('HGET', held_key, hash)
end

for a = first_item, #ARGV do
  local hash = string.sub(ARGV[a], 1, 8)
  local slot, due, back, rest = struct.unpack('<I4dI4', ARGV[a], 9)
  local v = string.sub(ARGV[a], rest)
  local _, first = find(hash, slot, back)
  if first then
    codes[#codes + 1] = 'r'
    firsts[#firsts + 1] = first
  else
    open_slot(slot, added[slot - 1] or 0)
    local flags = string.byte(v, 1)
    if bit.band(flags, WATCHED) ~= 0 then
      watched = watched + 1
      if bit.band(flags, LOW_TOP) ~= 0 then low_top = low_top + 1 end
    end
    local held_slot = math.floor(now / held_s)
    for h = held_slot, held_slot - 1, -1 do  -- labels that came before their query
      local held = held_value(held_prefix .. h, hash)
      if held then
        v = with_labels(v, struct.unpack(pair_fmt, held))
        redis.call('HDEL', held_prefix .. h, hash)
        break
      end
    end
    local entered
    v, entered = settle(hash, slot, v)
    local key = pending_key(slot, hash)
    redis.call('HSET', key, hash, v)
    expiring[key], added[slot] = slot, (added[slot] or 0) + 1
    if entered then
      codes[#codes + 1] = 'e'
    else
      codes[#codes + 1] = 'n'
      if bit.band(string.byte(v, 1), AUDIT) ~= 0 then
        redis.call('ZADD', KEYS[3], string.format('%.17g', due), struct.pack('<I4', slot) .. hash)
      end
    end
  end
end
for key, slot in pairs(expiring) do redis.call('PEXPIRE', key, expire_ms(slot)) end
for slot, n in pairs(added) do redis.call('HINCRBY', KEYS[4], 'n:' .. slot, n) end
if watched > 0 then
  redis.call('HINCRBY', KEYS[2], 'watched', watched)
  if low_top > 0 then redis.call('HINCRBY', KEYS[2], 'low_top', low_top) end
end
return {table.concat(codes), unpack(firsts)}
