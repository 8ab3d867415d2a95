-- Take or renew a scope's leader lease. KEYS[1] the lease (a string "<epoch> <holder>"
-- with a TTL), KEYS[2] the epoch counter (no TTL: epochs only grow), KEYS[3] the scope's
-- incarnation (incarnation.lua is prepended). ARGV: holder, ttl_ms, the epoch the holder
-- last held ('' if none), the incarnation the holder's memory comes from. Returns
-- {epoch, holder} of the live lease after the call: the caller's own when it holds it now,
-- else the other holder's.
local holder, ttl, last = ARGV[1], ARGV[2], ARGV[3]
local refused = incarnation_refused(KEYS[3], ARGV[4])
if refused then return refused end
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
-- in between, so nothing it holds in memory is stale. Anyone else gets a new epoch: the
-- counter plus one, and at least the Redis time in microseconds, so that an epoch granted
-- after the counter was lost (FLUSHALL, a restart without persistence, a replica promoted
-- without the last writes) is above every epoch granted before: a stale leader's epoch is
-- never current again.
local epoch
local counter = redis.call('GET', KEYS[2])
if last ~= '' and not held and counter == last then
  epoch = tonumber(last)
else
  local t = redis.call('TIME')
  epoch = math.max(tonumber(counter or '0') + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('SET', KEYS[2], string.format('%d', epoch))
end
redis.call('SET', KEYS[1], string.format('%d', epoch) .. ' ' .. holder, 'PX', ttl)
return {epoch, holder}
