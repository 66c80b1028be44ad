local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.match(v, '^([^\t]*)') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
