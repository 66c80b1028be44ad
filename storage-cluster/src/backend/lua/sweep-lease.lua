-- Returns the tenants whose sweep lease node ARGV[1] holds, or takes because
-- it expired, or because it is free and the tenant is this node's to take;
-- renews them for ARGV[2] ms. ARGV[3..] are pairs: tenant, '1' if the node
-- may take it while free. Redis' own clock, so the nodes' clocks need
-- not agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, ttl = ARGV[1], tonumber(ARGV[2])
local mine = {}
for i = 3, #ARGV, 2 do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  local take = not v and ARGV[i + 1] == '1'
  if v then
    local sep = string.find(v, '|', 1, true)
    local holder = string.sub(v, 1, sep - 1)
    take = holder == node or tonumber(string.sub(v, sep + 1)) <= now
  end
  if take then
    redis.call('HSET', KEYS[1], ARGV[i], node .. '|' .. (now + ttl))
    table.insert(mine, ARGV[i])
  end
end
return mine
