local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, ttl = ARGV[1], tonumber(ARGV[2])
local mine = {}
for i = 3, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  local take = not v
  if v then
    local sep = string.find(v, '|', 1, true)
    take = string.sub(v, 1, sep - 1) == node or tonumber(string.sub(v, sep + 1)) <= now
  end
  if take then
    redis.call('HSET', KEYS[1], ARGV[i], node .. '|' .. (now + ttl))
    table.insert(mine, ARGV[i])
  end
end
return mine
