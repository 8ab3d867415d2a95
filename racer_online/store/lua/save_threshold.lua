-- Keep only a newer threshold version (fence.lua is prepended). KEYS[1] threshold hash,
-- KEYS[2] history stream, KEYS[3] the epoch counter; ARGV: version, json, history maxlen,
-- epoch.
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if tonumber(ARGV[1]) <= current then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'json', ARGV[2])
return 1
