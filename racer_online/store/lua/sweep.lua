-- Enter audited records whose grading never completed as a worst case. KEYS[1] the window
-- stream, KEYS[2] the scope's audits (sorted set: pending key scored by the time its
-- feedback horizon ends), KEYS[3] the counters hash. ARGV: now (unix seconds), limit,
-- window maxlen, n, the n catalogue models. Takes at most `limit` members whose horizon
-- ended; each one not yet in the window enters once, with the lam and decision time it was
-- decided with, its missing labels as '?': the leader takes the worst case over them. A
-- member whose hash is gone (the sweep ran later than the hash's grace period) is counted
-- as lost. Returns {entered, lost, entered in total}.
local now, limit, maxlen, n = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
local entered, lost = 0, 0
for _, pending in ipairs(due) do
  local fields = {'d', 'in', 's', 'lam', 't'}
  for i = 1, n do fields[#fields + 1] = 'y:' .. ARGV[4 + i] end
  local got = redis.call('HMGET', pending, unpack(fields))
  if not got[1] then
    lost = lost + 1
  elseif not got[2] then
    local labels = {}
    for i = 1, n do labels[i] = got[5 + i] or '?' end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 's', got[3],
               'y', table.concat(labels), 'lam', got[4], 't', got[5] or '0', 'q', pending)
    redis.call('HSET', pending, 'in', '1')
    entered = entered + 1
  end
  redis.call('ZREM', KEYS[2], pending)
end
if entered > 0 then redis.call('HINCRBY', KEYS[3], 'expired_audits', entered) end
if lost > 0 then redis.call('HINCRBY', KEYS[3], 'lost_audits', lost) end
local total = redis.call('HGET', KEYS[3], 'expired_audits') or '0'
return {entered, lost, tonumber(total)}
