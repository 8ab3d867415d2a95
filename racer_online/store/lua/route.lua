-- Store each routed decision of a batch once; a redelivered query gets its first decision
-- back. ARGV after the catalogue, 6 per query: decision, packed scores, lam, audit (0/1),
-- invoked model indices ("0,3"), decision time (unix seconds). Returns one letter per
-- query, n (stored now), e (stored now and early feedback completed it: it entered the
-- window) or r (stored before), then the first decision of each r, in order. An audited
-- record that is not complete yet joins the audits, scored by the end of its feedback
-- horizon, and its hash lives one horizon longer: the leader's sweep enters it as a worst
-- case if its grading never completes (sweep.lua), and needs its scores, lam and time.
local codes, firsts = {}, {}
for q = first_key, #KEYS do
  local pending, a = KEYS[q], first_item + (q - first_key) * 6
  local stored = redis.call('HGET', pending, 'd')
  if stored then
    codes[#codes + 1] = 'r'
    firsts[#firsts + 1] = stored
  else
    redis.call('HSET', pending, 'd', ARGV[a], 's', ARGV[a + 1], 'lam', ARGV[a + 2],
               'a', ARGV[a + 3], 'm', ARGV[a + 4], 't', ARGV[a + 5])
    redis.call('PEXPIRE', pending, ttl)
    count_invoked(pending)
    if enter_window(pending) == 1 then
      codes[#codes + 1] = 'e'
    else
      codes[#codes + 1] = 'n'
      if ARGV[a + 3] == '1' then
        redis.call('PEXPIRE', pending, 2 * ttl)
        redis.call('ZADD', KEYS[3], tonumber(ARGV[a + 5]) + ttl / 1000, pending)
      end
    end
  end
end
return {table.concat(codes), unpack(firsts)}
