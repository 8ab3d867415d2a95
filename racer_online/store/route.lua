-- Store a routed decision once. A redelivered query gets the first decision back.
-- ARGV: decision, packed scores, lam, audit (0/1), invoked model indices ("0,3"), ttl_ms,
-- window maxlen, catalogue models...
local stored = redis.call('HGET', KEYS[1], 'd')
if stored then return {0, stored, 0} end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 's', ARGV[2], 'lam', ARGV[3], 'a', ARGV[4],
           'm', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local models = {}
for i = 8, #ARGV do models[#models + 1] = ARGV[i] end
count_invoked(models)
return {1, ARGV[1], enter_window(ARGV[7], models)}
