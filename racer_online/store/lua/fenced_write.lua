-- One command of a leader write on KEYS[1], fenced (fence.lua is prepended; KEYS[2] the
-- epoch counter). ARGV: the command, its arguments after the key, then the epoch.
return redis.call(ARGV[1], KEYS[1], unpack(ARGV, 2, #ARGV - 1))
