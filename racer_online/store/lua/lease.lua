-- Take or renew a scope's leader lease. KEYS[1] the lease (a string "<epoch> <holder>"
-- with a TTL), KEYS[2] the epoch counter (no TTL: epochs only grow). ARGV: holder, ttl_ms,
-- the epoch the holder last held ('' if none). Returns {epoch, holder} of the live lease
-- after the call: the caller's own when it holds it now, else the other holder's.
local holder, ttl, last = ARGV[1], ARGV[2], ARGV[3]
local held = redis.call('GET', KEYS[1])
if held and held == last .. ' ' .. holder then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {tonumber(last), holder}
end
if held and string.match(held, '^%d+ (.*)$') ~= holder then
  local epoch, other = string.match(held, '^(%d+) (.*)$')
  return {tonumber(epoch), other}
end
-- Free (or this holder's own under an epoch it gave up). The holder keeps its epoch when
-- nobody took the lease since it lapsed (the counter did not move): no other leader wrote
-- in between, so nothing it holds in memory is stale. Anyone else gets a new epoch.
local epoch
if last ~= '' and not held and redis.call('GET', KEYS[2]) == last then
  epoch = tonumber(last)
else
  epoch = redis.call('INCR', KEYS[2])
end
redis.call('SET', KEYS[1], epoch .. ' ' .. holder, 'PX', ttl)
return {epoch, holder}
