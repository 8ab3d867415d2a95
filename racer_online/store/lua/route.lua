-- Store each routed decision of a batch once; a redelivered query gets its first decision
-- back. ARGV after the catalogue, 6 per query: decision, packed scores, lam, audit (0/1),
-- invoked model indices ("0,3"), decision time (unix seconds). Returns one letter per
-- query, n (stored now), e (stored now and early feedback completed it: it entered the
-- window) or r (stored before), then the first decision of each r, in order.
local codes, firsts = {}, {}
for q = 3, #KEYS do
  local pending, a = KEYS[q], first_item + (q - 3) * 6
  local stored = redis.call('HGET', pending, 'd')
  if stored then
    codes[#codes + 1] = 'r'
    firsts[#firsts + 1] = stored
  else
    redis.call('HSET', pending, 'd', ARGV[a], 's', ARGV[a + 1], 'lam', ARGV[a + 2],
               'a', ARGV[a + 3], 'm', ARGV[a + 4], 't', ARGV[a + 5])
    redis.call('PEXPIRE', pending, ttl)
    count_invoked(pending)
    codes[#codes + 1] = enter_window(pending) == 1 and 'e' or 'n'
  end
end
return {table.concat(codes), unpack(firsts)}
