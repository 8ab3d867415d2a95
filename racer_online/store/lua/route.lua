-- Store each routed decision of a batch once. ARGV after the head, 4 per query: the query
-- id's hash, the decision's slot, the packed record (no labels yet), the end of its
-- feedback horizon (s). Returns one letter per query, n (stored now), e (stored now and
-- held labels completed it: it entered the window) or r (stored before, in this slot or
-- the one before: a redelivery), then the stored record of each r, in order: with the
-- query, it rebuilds the first decision. An audited record not complete yet joins the
-- audits, scored by the end of its horizon, for the leader's sweep.
local codes, firsts = {}, {}
for a = first_item, #ARGV, 4 do
  local hash, slot, v = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
  local _, first = find(hash, slot, 2)
  if first then
    codes[#codes + 1] = 'r'
    firsts[#firsts + 1] = first
  else
    open_slot(slot)
    local held_slot = math.floor(now / held_s)
    for h = held_slot, held_slot - 1, -1 do  -- labels that came before their query
      local held = redis.call('HGET', held_prefix .. h, hash)
      if held then
        v = with_labels(v, struct.unpack(pair_fmt, held))
        redis.call('HDEL', held_prefix .. h, hash)
        break
      end
    end
    local entered
    v, entered = settle(hash, slot, v)
    local key = pending_key(slot, hash)
    redis.call('HSET', key, hash, v)
    redis.call('PEXPIRE', key, expire_ms(slot))
    redis.call('HINCRBY', KEYS[4], 'n:' .. slot, 1)
    if entered then
      codes[#codes + 1] = 'e'
    else
      codes[#codes + 1] = 'n'
      if bit.band(string.byte(v, 1), AUDIT) ~= 0 then
        redis.call('ZADD', KEYS[3], ARGV[a + 3], struct.pack('<I4', slot) .. hash)
      end
    end
  end
end
return {table.concat(codes), unpack(firsts)}
