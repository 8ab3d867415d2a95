-- Give a scope's lease back (a graceful stop, or Faust's leadership moved) so the next
-- leader need not wait for its TTL: only the caller's own lease. KEYS[1] the lease; ARGV:
-- "<epoch> <holder>". Returns 1 when it was released.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
