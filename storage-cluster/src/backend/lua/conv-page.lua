local want = tonumber(ARGV[3])
local out, offset = {}, 0
while #out < want * 2 do
  local items = redis.call('ZRANGE', KEYS[1], ARGV[1], '-inf', 'BYSCORE', 'REV', 'LIMIT', offset, want, 'WITHSCORES')
  if #items == 0 then break end
  for i = 1, #items, 2 do
    local m, s = items[i], items[i + 1]
    if ARGV[2] == '' or tonumber(s) < tonumber(ARGV[1]) or m < ARGV[2] then
      out[#out + 1] = m
      out[#out + 1] = s
      if #out >= want * 2 then break end
    end
  end
  offset = offset + want
end
return out
