-- Common head of route.lua and feedback.lua (prepended to them). Both take one scope's
-- batch. KEYS: [1] the window stream, [2] the counters (upper bound, covariate), [3] the
-- audits awaiting their grading (sweep.lua), [4] the slots hash (bucket count and records
-- per slot), [5] the scope's incarnation (incarnation.lua, prepended before this head).
-- ARGV: horizon (s), window maxlen, K models, slot length (s), the pending and held key
-- prefixes, held life (s), minimum buckets per slot, now (s), the caller's incarnation, then
-- the records.
-- A pending record is a field of racer:{scope}:pending:<slot>:<bucket>, named by its query
-- id's 8-byte hash, its value packed as records.py says: flags, then the known, correct
-- and invoked masks (w bytes each), then what only Python reads. Keys are built here from
-- the scope's prefix: they share its hash tag, so they live on the shard of KEYS[1].
local ttl, maxlen, k = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local slot_s, pending_prefix, held_prefix = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local held_s, min_buckets, now = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local first_item = 11
local refused = incarnation_refused(KEYS[5], ARGV[10])
if refused then return refused end
local w = math.floor((k + 7) / 8)
local masks_fmt = '<BI' .. w .. 'I' .. w .. 'I' .. w  -- flags, known, correct, invoked
local pair_fmt = '<I' .. w .. 'I' .. w  -- known, correct (a held entry)
local full = 2 ^ k - 1
local AUDIT, ENTERED, COUNTED, WATCHED, LOW_TOP = 1, 2, 4, 32, 64

local buckets = {}  -- slot -> its bucket count (false: no such slot), read once per call
local function bucket_count(slot)
  if buckets[slot] == nil then
    buckets[slot] = tonumber(redis.call('HGET', KEYS[4], 'b:' .. slot)) or false
  end
  return buckets[slot]
end

local function pending_key(slot, hash)
  local b = bucket_count(slot)
  if not b then return nil end
  return pending_prefix .. slot .. ':' .. (struct.unpack('<I4', hash) % b)
end

-- A slot's buckets hold about 100 records each (a listpack): as many as the previous slot
-- needed, with a quarter to spare, and at least min_buckets. `uncounted`: records of the
-- previous slot this call stored and has not counted yet.
local function open_slot(slot, uncounted)
  if bucket_count(slot) then return end
  local before = tonumber(redis.call('HGET', KEYS[4], 'n:' .. (slot - 1)) or '0') + uncounted
  buckets[slot] = math.max(min_buckets, math.ceil(before * 1.25 / 100))
  redis.call('HSET', KEYS[4], 'b:' .. slot, buckets[slot])
  local gone = slot - math.ceil(ttl / slot_s) - 3  -- its keys have expired
  redis.call('HDEL', KEYS[4], 'b:' .. gone, 'n:' .. gone)
end

-- A slot's keys live until one slot after the horizon of its last decision: the grace the
-- leader's sweep has to enter the audits among them.
local function expire_ms(slot)
  return math.max(1, math.floor(((slot + 2) * slot_s + ttl - now) * 1000))
end

-- The record of a query in the `count` slots from `newest` back: key, value, slot.
local function find(hash, newest, count)
  for slot = newest, newest - count + 1, -1 do
    local key = pending_key(slot, hash)
    if key then
      local v = redis.call('HGET', key, hash)
      if v then return key, v, slot end
    end
  end
end

local function with_labels(v, known, correct)
  local flags, _, _, invoked, rest = struct.unpack(masks_fmt, v)
  return struct.pack(masks_fmt, flags, known, correct, invoked) .. string.sub(v, rest)
end

-- What a record's labels now allow: an audited record with every model graded enters the
-- window once (the entry is the record's value); a decision not drawn for audit whose
-- invoked models are all graded counts once in the upper bound of the miss rate (it also
-- counts queries no model could answer; shown, never used to decide). Returns the new
-- value and whether it entered.
local function settle(hash, slot, v)
  local flags, known, correct, invoked = struct.unpack(masks_fmt, v)
  local entered = false
  if bit.band(flags, AUDIT) == 0 then
    if bit.band(flags, COUNTED) == 0 and bit.band(invoked, known) == invoked then
      flags = flags + COUNTED
      redis.call('HINCRBY', KEYS[2], 'n', 1)
      if bit.band(invoked, correct) == 0 then redis.call('HINCRBY', KEYS[2], 'misses', 1) end
    end
  elseif bit.band(flags, ENTERED) == 0 and known == full then
    flags = flags + ENTERED
    entered = true
  end
  v = string.char(flags) .. string.sub(v, 2)
  if entered then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'r', v, 'q', hash)
    redis.call('ZREM', KEYS[3], struct.pack('<I4', slot) .. hash)
  end
  return v, entered
end
