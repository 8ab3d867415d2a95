-- Enter audited records whose grading never completed as a worst case. KEYS[1] the window
-- stream, KEYS[2] the scope's audits (sorted set: slot u32 + query hash, scored by the end
-- of the feedback horizon), KEYS[3] the counters hash, KEYS[4] the slots hash. ARGV: now
-- (unix seconds), limit, window maxlen, the pending key prefix. Takes at most `limit`
-- members whose horizon ended; each one not yet in the window enters once, as its record
-- is: the labels never given stay unknown ('?'), and the leader takes the worst case over
-- them. A member whose record is gone (the sweep came after its slot's grace period) is
-- counted as lost. Returns {entered, lost, entered in total, audits still awaiting their
-- grading} (the last is what a loss of Redis' state would take with it).
local now, limit, maxlen, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
local entered, lost = 0, 0
for _, member in ipairs(due) do
  local slot, hash = struct.unpack('<I4', member), string.sub(member, 5)
  local b = tonumber(redis.call('HGET', KEYS[4], 'b:' .. slot))
  local key = b and prefix .. slot .. ':' .. (struct.unpack('<I4', hash) % b)
  local v = key and redis.call('HGET', key, hash)
  if not v then
    lost = lost + 1
  elseif bit.band(string.byte(v, 1), 2) == 0 then  -- not in the window yet
    v = string.char(string.byte(v, 1) + 2) .. string.sub(v, 2)
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'r', v, 'q', hash)
    redis.call('HSET', key, hash, v)
    entered = entered + 1
  end
  redis.call('ZREM', KEYS[2], member)
end
if entered > 0 then redis.call('HINCRBY', KEYS[3], 'expired_audits', entered) end
if lost > 0 then redis.call('HINCRBY', KEYS[3], 'lost_audits', lost) end
local total = redis.call('HGET', KEYS[3], 'expired_audits') or '0'
return {entered, lost, tonumber(total), redis.call('ZCARD', KEYS[2])}
