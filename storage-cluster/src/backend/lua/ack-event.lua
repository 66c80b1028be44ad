local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur and string.match(cur, '^(%d+):') == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
