local device, now, max, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('HEXISTS', KEYS[1], device) == 1 then
  redis.call('HSET', KEYS[1], device, now)
  return {0, 0, ''}
end
local known = redis.call('HLEN', KEYS[1])
local claimed, evicted = 0, ''
if known == 0 then
  claimed = redis.call('ZCARD', KEYS[3])
  if claimed > 0 then
    redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[3], 'AGGREGATE', 'MAX')
    redis.call('DEL', KEYS[3])
  end
elseif known >= max then
  local all = redis.call('HGETALL', KEYS[1])
  local oldest, seen = nil, nil
  for i = 1, #all, 2 do
    local t = tonumber(all[i + 1])
    if seen == nil or t < seen then oldest, seen = all[i], t end
  end
  redis.call('HDEL', KEYS[1], oldest)
  redis.call('DEL', prefix .. oldest, ARGV[5] .. oldest, ARGV[6] .. oldest)
  evicted = oldest
end
redis.call('HSET', KEYS[1], device, now)
return {1, claimed, evicted}
