-- Merge graded labels into pending records; the first label of a model wins. ARGV after
-- the head, 3 per event: the query id's hash, the known and correct masks of its labels.
-- The record is searched from the slot after now's (a worker's clock may run ahead) back
-- over the feedback horizon, newest first (ceil(horizon / slot) + 2 slots, one HGET each). Labels of a query not routed yet
-- are held for held_s to 2 held_s. Returns the outcome of each event as its first letter:
-- entered, joined, held, duplicate, conflict.
local newest, count = math.floor(now / slot_s) + 1, math.ceil(ttl / slot_s) + 2
local held_slot = math.floor(now / held_s)

local function merged(known, correct, known_ev, correct_ev)
  local new = bit.band(known_ev, bit.bnot(known))
  local clash = bit.band(bit.band(known_ev, known), bit.bxor(correct_ev, correct)) ~= 0
  return bit.bor(known, new), bit.bor(correct, bit.band(correct_ev, new)), new ~= 0, clash
end

local function hold(hash, known_ev, correct_ev)
  local key, known, correct = held_prefix .. held_slot, 0, 0
  local life = (held_slot + 2) * held_s - now
  for h = held_slot, held_slot - 1, -1 do
    local got = redis.call('HGET', held_prefix .. h, hash)
    if got then
      key, life = held_prefix .. h, (h + 2) * held_s - now
      known, correct = struct.unpack(pair_fmt, got)
      break
    end
  end
  local added, clash
  known, correct, added, clash = merged(known, correct, known_ev, correct_ev)
  if not added then return clash and 'conflict' or 'duplicate' end
  redis.call('HSET', key, hash, struct.pack(pair_fmt, known, correct))
  redis.call('PEXPIRE', key, math.max(1, math.floor(life * 1000)))
  return 'held'
end

local function merge(hash, known_ev, correct_ev)
  local key, v, slot = find(hash, newest, count)
  if not key then return hold(hash, known_ev, correct_ev) end
  local _, known, correct = struct.unpack(masks_fmt, v)
  local added, clash, entered
  known, correct, added, clash = merged(known, correct, known_ev, correct_ev)
  local before = v
  v, entered = settle(hash, slot, with_labels(v, known, correct))
  if v ~= before then redis.call('HSET', key, hash, v) end
  if entered then return 'entered' end
  if clash then return 'conflict' end
  return added and 'joined' or 'duplicate'
end

local out = {}
for a = first_item, #ARGV, 3 do
  out[#out + 1] = string.sub(merge(ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])), 1, 1)
end
return table.concat(out)
