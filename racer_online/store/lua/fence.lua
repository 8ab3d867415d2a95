-- Common head of every leader write (prepended): the write lands only under the scope's
-- current lease epoch. The last key is the scope's epoch counter (lease.lua increments it
-- whenever a new holder takes the lease), the last argument the epoch the writer holds.
-- Checked inside the write's own atomic call, so once a successor holds the lease no write
-- of the leader it replaced (stalled, or cut off from Kafka but not from Redis) can land.
local current_epoch = redis.call('GET', KEYS[#KEYS])
if current_epoch ~= ARGV[#ARGV] then
  return redis.error_reply('FENCED lease epoch ' .. ARGV[#ARGV] .. ' of the scope is superseded by '
                           .. (current_epoch or 'none'))
end
