-- Marks a message pending for one user's devices and moves the conversation
-- in the user's list, in one round trip (every key is in the user's slot).
-- KEYS[1]: the user's devices hash; KEYS[2]: the user's conversation list.
-- ARGV: [1] pending key prefix of the user (the user slot's key itself),
-- [2] msg_id, [3] seq, [4] a device to leave out ('' for none), [5] '1' to
-- mark the user slot when the user has no device, [6] now ms (the list never
-- moves back: GT), [7] conversation id. Returns the keys marked.
local keys = {}
local devices = redis.call('HKEYS', KEYS[1])
if #devices == 0 and ARGV[5] == '1' then
  table.insert(keys, ARGV[1])
end
for _, d in ipairs(devices) do
  if d ~= ARGV[4] then table.insert(keys, ARGV[1] .. d) end
end
for _, k in ipairs(keys) do
  redis.call('ZADD', k, ARGV[3], ARGV[2])
end
redis.call('ZADD', KEYS[2], 'GT', ARGV[6], ARGV[7])
return keys
