-- Shared head of route.lua and feedback.lua (prepended to them). Both take one scope's
-- batch: KEYS[1] the window stream, KEYS[2] the upper-bound counters, KEYS[3] the audits
-- awaiting their grading (see sweep.lua), then one pending hash per query. ARGV starts with ttl_ms, window maxlen, n, the n catalogue models.
local ttl, maxlen, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local models = {}
for i = 1, n do models[i] = ARGV[3 + i] end
local first_item = 4 + n  -- where the per-query arguments start
local first_key = 4  -- where the pending hashes start

-- A record enters the window once: routed, drawn for audit, every catalogue model graded.
-- Returns 1 when it entered now.
local function enter_window(pending)
  local fields = {'d', 'a', 'in', 's', 'lam', 't'}
  for i = 1, n do fields[#fields + 1] = 'y:' .. models[i] end
  local got = redis.call('HMGET', pending, unpack(fields))
  if not got[1] or got[2] ~= '1' or got[3] then return 0 end
  local labels = {}
  for i = 1, n do
    local y = got[6 + i]
    if not y then return 0 end
    labels[i] = y
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
             's', got[4], 'y', table.concat(labels), 'lam', got[5], 't', got[6] or '0',
             'q', pending)
  redis.call('HSET', pending, 'in', '1')
  -- Complete: the sweep no longer needs it, so it gives back its grace period.
  if redis.call('PTTL', pending) > tonumber(ttl) then redis.call('PEXPIRE', pending, ttl) end
  return 1
end

-- A decision not drawn for audit is graded on its invoked models only. Once they all are,
-- count whether every one was wrong: an upper bound of the miss rate (it also counts
-- queries that no model could answer), shown, never used to decide anything.
local function count_invoked(pending)
  local got = redis.call('HMGET', pending, 'd', 'a', 'u', 'm')
  if not got[1] or got[2] ~= '0' or got[3] then return end
  local wrong = 1
  for index in string.gmatch(got[4], '%d+') do
    local y = redis.call('HGET', pending, 'y:' .. models[tonumber(index) + 1])
    if not y then return end
    if y == '1' then wrong = 0 end
  end
  redis.call('HSET', pending, 'u', '1')
  redis.call('HINCRBY', KEYS[2], 'n', 1)
  redis.call('HINCRBY', KEYS[2], 'misses', wrong)
end
