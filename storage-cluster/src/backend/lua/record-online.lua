local v = redis.call('GET', KEYS[1])
local online = ARGV[1] == '1'
if (v == 'on') == online then return 0 end
redis.call('SET', KEYS[1], online and 'on' or ARGV[2], 'EX', ARGV[3])
return 1
