-- A scope's incarnation (created if there is none) and its stored threshold, in one call:
-- every worker's threshold poll. KEYS[1] the incarnation, KEYS[2] the threshold hash.
return {incarnation(KEYS[1]), redis.call('HGET', KEYS[2], 'json')}
