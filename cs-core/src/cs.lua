-- One customer-service command of one tenant, atomically: the same rules as
-- engine.rs beside it, step by step. storage's differential property test
-- runs random command sequences through both and compares every outcome and
-- view. Walk groups and agents in id order (sorted_keys), never in Redis'
-- hash order: the engine does.
--
-- KEYS: 1 groups (hash id -> Group json), 2 agents (hash id -> Agent json),
--       3 open sessions (hash id -> Session json, waiting or active),
--       4 customers (hash "customer\ngroup" -> session id),
--       5 left messages (hash id -> LeftMessage json, unclaimed)
-- ARGV: 1 tenant, 2 now (ms), 3 command json, 4 key prefix "cs:{<tenant>}:",
--       5 retention of ended sessions and claimed left messages (s)
-- Conversation ids are sha256-based, which Lua cannot compute: sessions are
-- stored without them and the caller derives them from the agents.
-- Dynamic keys (same hash tag): prefix.."q:"..group (zset of waiting session
-- ids scored by queue key), prefix.."S:"..id (ended session, expires),
-- prefix.."L:"..id (claimed left message, expires), prefix.."h:"..user
-- (zset of the ids of the user's ended sessions scored by end time,
-- expires), prefix.."ended" (zset of the tenant's ended session ids scored
-- by end time, trimmed to the retention), prefix.."version" (the tenant's count of commands run).
-- Returns the CsOutcome as json.

local K_GROUPS, K_AGENTS, K_OPEN, K_CUST, K_LEFT = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[2])
local cmd = cjson.decode(ARGV[3])
local P = ARGV[4]
local retention = tonumber(ARGV[5])

local DEFAULT_HANDLE_MS = 180000
local MAX_LEFT_UNCLAIMED = 10000
local MAX_COMMENT_BYTES = 1000
local MAX_CAPACITY = 1000

local groups, agents, sessions, left = {}, {}, {}, {}
local dirty_g, dirty_a, dirty_s, dirty_l = {}, {}, {}, {}
local fx = { assigned = {}, transferred = {}, ended = {}, timed_out = {}, changes = {} }

local function decode_or_false(v)
  if v then return cjson.decode(v) end
  return false
end

local function group(id)
  if groups[id] == nil then groups[id] = decode_or_false(redis.call('HGET', K_GROUPS, id)) end
  return groups[id] or nil
end

local function agent(id)
  if id == '' then return nil end
  if agents[id] == nil then agents[id] = decode_or_false(redis.call('HGET', K_AGENTS, id)) end
  return agents[id] or nil
end

local function session(id)
  if sessions[id] == nil then
    local v = redis.call('HGET', K_OPEN, id)
    if not v then v = redis.call('GET', P .. 'S:' .. id) end
    sessions[id] = decode_or_false(v)
  end
  return sessions[id] or nil
end

local function left_message(id)
  if left[id] == nil then
    local v = redis.call('HGET', K_LEFT, id)
    if not v then v = redis.call('GET', P .. 'L:' .. id) end
    left[id] = decode_or_false(v)
  end
  return left[id] or nil
end

-- The fields of a hash in id order (Redis returns them in hash order).
local function sorted_keys(key)
  local ids = redis.call('HKEYS', key)
  table.sort(ids)
  return ids
end

local function copy(t)
  return cjson.decode(cjson.encode(t))
end

local function contains(list, x)
  for _, v in ipairs(list) do if v == x then return true end end
  return false
end

local function insert_sorted(list, x)
  for i, v in ipairs(list) do
    if v == x then return end
    if v > x then table.insert(list, i, x) return end
  end
  table.insert(list, x)
end

local function remove_value(list, x)
  for i = #list, 1, -1 do if list[i] == x then table.remove(list, i) end end
end

local function new_agent(id, capacity)
  return { id = id, capacity = capacity, status = 'offline', connected = false, disconnected_ms = 0,
           load = 0, last_assigned_ms = 0, groups = {} }
end

local function agent_or_new(id, capacity)
  local a = agent(id)
  if not a then
    a = new_agent(id, capacity or 5)
    agents[id] = a
  end
  return a
end

local function available(a)
  return a ~= nil and a.connected and a.status == 'online' and a.load < a.capacity
end

local function ok(reply) return { Ok = reply } end
local function err(name, detail)
  if detail then return { Err = { error = name, detail = detail } } end
  return { Err = { error = name } }
end
local function session_reply(s, position) return ok({ kind = 'session', session = s, position = position or 0 }) end

local function qkey(g) return P .. 'q:' .. g end
local function cust_field(customer, g) return customer .. '\n' .. g end

local function note_change(g, index)
  local cur = fx.changes[g]
  if cur == nil or index < cur then fx.changes[g] = index end
end

local function enqueue(s, front)
  local k = qkey(s.group)
  local key, index
  if front then
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    key = first[2] and (tonumber(first[2]) - 1) or 0
    index = 0
  else
    local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
    key = last[2] and (tonumber(last[2]) + 1) or 0
    index = redis.call('ZCARD', k)
  end
  redis.call('ZADD', k, key, s.id)
  s.queue_key = key
  note_change(s.group, index)
  dirty_s[s.id] = true
end

local function dequeue(s)
  local k = qkey(s.group)
  local rank = redis.call('ZRANK', k, s.id)
  if rank then
    redis.call('ZREM', k, s.id)
    note_change(s.group, rank)
  end
end

local function position(s)
  if s.state ~= 'waiting' then return 0 end
  local rank = redis.call('ZRANK', qkey(s.group), s.id)
  if rank then return rank + 1 end
  return 0
end

local function release_agent(s, handled)
  local a = agent(s.agent)
  if a then
    a.load = math.max(0, a.load - 1)
    dirty_a[a.id] = true
  end
  if handled then
    local g = group(s.group)
    if g then
      local sample = math.max(0, now - s.assigned_ms)
      if g.avg_handle_ms == 0 then g.avg_handle_ms = sample
      else g.avg_handle_ms = math.floor((g.avg_handle_ms * 4 + sample) / 5) end
      dirty_g[g.id] = true
    end
  end
end

local function finish(s, by, reason)
  if s.state == 'waiting' then dequeue(s)
  elseif s.state == 'active' then release_agent(s, true)
  else return end
  s.state = 'ended'
  s.ended_ms = now
  s.ended_by = by
  s.end_reason = reason
  redis.call('HDEL', K_CUST, cust_field(s.customer, s.group))
  table.insert(fx.ended, copy(s))
  dirty_s[s.id] = true
end

local function assign(s, agent_id)
  dequeue(s)
  s.state = 'active'
  s.agent = agent_id
  s.assigned_ms = now
  if (s.first_assigned_ms or 0) == 0 then s.first_assigned_ms = now end
  table.insert(fx.assigned, copy(s))
  local a = agent(agent_id)
  if a then
    a.load = a.load + 1
    a.last_assigned_ms = now
  end
  dirty_a[agent_id] = true
  dirty_s[s.id] = true
end

local function requeue(s, reason)
  release_agent(s, false)
  local from_agent = s.agent
  s.agent = ''
  table.insert(s.previous_agents, from_agent)
  s.conversation_id = ''
  s.state = 'waiting'
  s.queued_ms = now
  enqueue(s, true)
  table.insert(fx.transferred, { session = copy(s), from_agent = from_agent, from_group = s.group, reason = reason })
end

local function open_sessions()
  local out = {}
  local all = redis.call('HGETALL', K_OPEN)
  for i = 1, #all, 2 do
    local id = all[i]
    if sessions[id] == nil then sessions[id] = cjson.decode(all[i + 1]) end
  end
  for _, s in pairs(sessions) do
    if s and s.state ~= 'ended' then table.insert(out, s) end
  end
  return out
end

local function requeue_all(agent_id, reason)
  local mine = {}
  for _, s in ipairs(open_sessions()) do
    if s.state == 'active' and s.agent == agent_id then table.insert(mine, s) end
  end
  -- Newest first: front insertion leaves the oldest assignment first in line.
  table.sort(mine, function(a, b)
    if a.assigned_ms ~= b.assigned_ms then return a.assigned_ms > b.assigned_ms end
    return a.id > b.id
  end)
  for _, s in ipairs(mine) do requeue(s, reason) end
end

local function choose_agent(g)
  if g.policy == 'manual-pick' then return nil end
  local best
  if g.policy == 'least-loaded' then
    for _, m in ipairs(g.members) do
      local a = agent(m)
      if available(a) then
        if best == nil or a.load < best.load
          or (a.load == best.load and (a.last_assigned_ms < best.last_assigned_ms
            or (a.last_assigned_ms == best.last_assigned_ms and a.id < best.id))) then
          best = a
        end
      end
    end
    return best
  end
  local first
  for _, m in ipairs(g.members) do
    local a = agent(m)
    if available(a) then
      if first == nil then first = a end
      if a.id > g.rr_last then return a end
    end
  end
  return first
end

-- Serves the queue head that joined earliest; ties go to the lower group id
-- (groups are walked in id order and only an earlier time replaces the best).
local function assign_pass()
  local ids = sorted_keys(K_GROUPS)
  while true do
    local best_q, best_g, best_s, best_a
    for _, gid in ipairs(ids) do
      local g = group(gid)
      if g then
        local head = redis.call('ZRANGE', qkey(gid), 0, 0)[1]
        if head then
          local a = choose_agent(g)
          if a then
            local s = session(head)
            local queued = s and s.queued_ms or 0
            if best_q == nil or queued < best_q then
              best_q, best_g, best_s, best_a = queued, g, s, a
            end
          end
        end
      end
    end
    if best_g == nil or best_s == nil then break end
    if best_g.policy == 'round-robin' then
      best_g.rr_last = best_a.id
      dirty_g[best_g.id] = true
    end
    assign(best_s, best_a.id)
  end
end

local function put_member(gid, agent_id, capacity)
  local g = group(gid)
  if not g then return err('no_such_group') end
  -- Without one: the agent's capacity once it has one from a group, else the
  -- group's default.
  if capacity == nil or capacity == cjson.null then
    local a = agent(agent_id)
    if a and next(a.groups) ~= nil then capacity = a.capacity else capacity = g.default_capacity end
  end
  if capacity == 0 or capacity > MAX_CAPACITY then
    return err('invalid', 'capacity must be between 1 and ' .. MAX_CAPACITY)
  end
  insert_sorted(g.members, agent_id)
  dirty_g[gid] = true
  local a = agent_or_new(agent_id, capacity)
  a.capacity = capacity
  insert_sorted(a.groups, gid)
  dirty_a[agent_id] = true
  return ok({ kind = 'agent', agent = a })
end

local handlers = {}

handlers.put_group = function(c)
  local spec = c.spec
  if spec.name == '' then spec.name = spec.id end
  local g = group(spec.id)
  if g and c.only and #c.only > 0 then
    -- Only the fields named: what another admin changed meanwhile stays.
    for _, k in ipairs(c.only) do g[k] = spec[k] end
    dirty_g[spec.id] = true
    return ok({ kind = 'group', group = g })
  end
  if not g then
    g = { members = {}, avg_handle_ms = 0, rr_last = '' }
    groups[spec.id] = g
  end
  for k, v in pairs(spec) do g[k] = v end
  dirty_g[spec.id] = true
  return ok({ kind = 'group', group = g })
end

handlers.delete_group = function(c)
  local g = group(c.group)
  if not g then return err('no_such_group') end
  for _, s in ipairs(open_sessions()) do
    if s.group == c.group then
      return err('conflict', 'the group has waiting or open sessions; end or transfer them first')
    end
  end
  for _, m in ipairs(g.members) do
    local a = agent(m)
    if a then
      remove_value(a.groups, c.group)
      dirty_a[m] = true
    end
  end
  groups[c.group] = false
  redis.call('DEL', qkey(c.group))
  dirty_g[c.group] = true
  return ok({ kind = 'done' })
end

handlers.put_member = function(c) return put_member(c.group, c.agent, c.capacity) end

handlers.remove_member = function(c)
  local g = group(c.group)
  if not g then return err('no_such_group') end
  remove_value(g.members, c.agent)
  dirty_g[c.group] = true
  local a = agent(c.agent)
  if a then
    remove_value(a.groups, c.group)
    dirty_a[c.agent] = true
  end
  return ok({ kind = 'done' })
end

handlers.request = function(c)
  local g = group(c.group)
  if not g then return err('no_such_group') end
  local existing = redis.call('HGET', K_CUST, cust_field(c.customer, c.group))
  if existing then
    local s = session(existing)
    if not s then return err('no_such_session') end
    return session_reply(s, 0)
  end
  if redis.call('ZCARD', qkey(c.group)) >= g.max_queue then return err('queue_full') end
  local online = false
  for _, m in ipairs(g.members) do
    local a = agent(m)
    if a and a.connected and a.status == 'online' then online = true break end
  end
  if not online then return err('no_agent_online') end
  local s = { id = c.session_id, group = c.group, customer = c.customer, agent = '', conversation_id = '',
              conversations = {}, state = 'waiting', created_ms = now, queued_ms = now, assigned_ms = 0, first_assigned_ms = 0,
              ended_ms = 0, ended_by = '', end_reason = '', score = 0, comment = '',
              first_message = c.first_message, queue_key = 0, previous_agents = {},
              context = c.context or { page = '', user_agent = '' }, transfer_note = '' }
  sessions[s.id] = s
  redis.call('HSET', K_CUST, cust_field(c.customer, c.group), s.id)
  enqueue(s, false)
  return session_reply(s, 0)
end

handlers.cancel = function(c)
  local id = redis.call('HGET', K_CUST, cust_field(c.customer, c.group))
  local s = id and session(id)
  if not s then return err('no_such_session') end
  if s.state ~= 'waiting' then return err('conflict', 'the session already has an agent; end it instead') end
  finish(s, c.customer, 'cancelled')
  return ok({ kind = 'done' })
end

handlers.set_status = function(c)
  if c.status == 'online' then
    for _, gid in ipairs(sorted_keys(K_GROUPS)) do
      local g = group(gid)
      if g and g.auto_join and not contains(g.members, c.agent) then
        local r = put_member(g.id, c.agent, nil)
        if r.Err then return r end
      end
    end
  end
  local a = agent_or_new(c.agent)
  a.status = c.status
  dirty_a[c.agent] = true
  if c.status == 'offline' then requeue_all(c.agent, 'agent went offline') end
  return ok({ kind = 'agent', agent = a })
end

handlers.connected = function(c)
  local a = agent_or_new(c.agent)
  a.connected = true
  a.disconnected_ms = 0
  dirty_a[c.agent] = true
  return ok({ kind = 'agent', agent = a })
end

handlers.disconnected = function(c)
  local a = agent(c.agent)
  if a then
    a.connected = false
    a.disconnected_ms = now
    dirty_a[c.agent] = true
  end
  return ok({ kind = 'done' })
end

handlers.accept = function(c)
  local g = group(c.group)
  if not g then return err('no_such_group') end
  if g.policy ~= 'manual-pick' then
    return err('invalid', 'group ' .. c.group .. ' assigns automatically (' .. g.policy
      .. '); AcceptSession is for manual-pick groups')
  end
  if not contains(g.members, c.agent) then return err('forbidden', 'not an agent of group ' .. c.group) end
  if not available(agent(c.agent)) then return err('agent_unavailable') end
  local s
  if c.customer ~= nil and c.customer ~= cjson.null and c.customer ~= '' then
    local id = redis.call('HGET', K_CUST, cust_field(c.customer, c.group))
    s = id and session(id)
    if not s then return err('no_such_session') end
    if s.state ~= 'waiting' then return err('conflict', 'that customer is not waiting any more') end
  else
    local head = redis.call('ZRANGE', qkey(c.group), 0, 0)[1]
    if not head then return err('nobody_waiting') end
    s = session(head)
    if not s then return err('no_such_session') end
  end
  assign(s, c.agent)
  return session_reply(s, 0)
end

handlers.transfer = function(c)
  local s = session(c.session_id)
  if not s then return err('no_such_session') end
  if s.state ~= 'active' then return err('conflict', 'only a session with an agent can be transferred') end
  if s.agent ~= c.by and not c.admin then
    return err('forbidden', 'only the session\'s agent or an admin can transfer it')
  end
  local from_agent, from_group, customer = s.agent, s.group, s.customer
  if c.target.agent then
    local to = c.target.agent
    if to == from_agent then return err('invalid', 'the session is already with that agent') end
    if not available(agent(to)) then return err('agent_unavailable') end
    release_agent(s, true)
    table.insert(s.previous_agents, from_agent)
    s.state = 'waiting'
    s.transfer_note = c.note or ''
    assign(s, to)
  else
    local to = c.target.group
    if not group(to) then return err('no_such_group') end
    if to ~= from_group and redis.call('HEXISTS', K_CUST, cust_field(customer, to)) == 1 then
      return err('conflict', 'the customer already has a session in that group')
    end
    release_agent(s, true)
    redis.call('HDEL', K_CUST, cust_field(customer, from_group))
    redis.call('HSET', K_CUST, cust_field(customer, to), s.id)
    table.insert(s.previous_agents, s.agent)
    s.agent = ''
    s.conversation_id = ''
    s.state = 'waiting'
    s.group = to
    s.queued_ms = now
    s.transfer_note = c.note or ''
    enqueue(s, true)
  end
  table.insert(fx.transferred, { session = copy(s), from_agent = from_agent, from_group = from_group,
                                 reason = 'transfer' })
  return session_reply(s, 0)
end

handlers['end'] = function(c)
  local s = session(c.session_id)
  if not s then return err('no_such_session') end
  if s.state == 'ended' then return err('conflict', 'the session has already ended') end
  local reason
  if s.customer == c.by then reason = 'ended by the customer'
  elseif s.agent == c.by and c.by ~= '' then reason = 'ended by the agent'
  elseif c.admin then reason = 'ended by an admin'
  else return err('forbidden', 'only the session\'s customer, its agent or an admin can end it') end
  finish(s, c.by, reason)
  return session_reply(s, 0)
end

handlers.rate = function(c)
  local s = session(c.session_id)
  if not s then return err('no_such_session') end
  if s.customer ~= c.customer then return err('forbidden', 'only the session\'s customer can rate it') end
  if c.score < 1 or c.score > 5 then return err('invalid', 'score must be between 1 and 5') end
  if #c.comment > MAX_COMMENT_BYTES then
    return err('invalid', 'comment is longer than ' .. MAX_COMMENT_BYTES .. ' bytes')
  end
  if s.state ~= 'ended' then return err('conflict', 'a session can be rated once it has ended') end
  if s.assigned_ms == 0 then return err('conflict', 'the session never had an agent') end
  if s.score ~= 0 then return err('conflict', 'the session has already been rated') end
  s.score = c.score
  s.comment = c.comment
  dirty_s[s.id] = true
  return session_reply(s, 0)
end

handlers.leave_message = function(c)
  local m = c.message
  if not group(m.group) then return err('no_such_group') end
  if redis.call('HLEN', K_LEFT) >= MAX_LEFT_UNCLAIMED then return err('queue_full') end
  left[m.id] = m
  dirty_l[m.id] = true
  return ok({ kind = 'left_message', message = m })
end

handlers.claim = function(c)
  local m = left_message(c.id)
  if not m then return err('no_such_left_message') end
  local g = group(m.group)
  if not (g and contains(g.members, c.agent)) then return err('forbidden', 'not an agent of group ' .. m.group) end
  if m.claimed_by == c.agent then return ok({ kind = 'left_message', message = m }) end
  if m.claimed_by ~= '' then return err('conflict', 'already claimed by ' .. m.claimed_by) end
  m.claimed_by = c.agent
  m.claimed_ms = now
  dirty_l[m.id] = true
  return ok({ kind = 'left_message', message = m })
end

handlers.sweep = function(c)
  for _, gid in ipairs(sorted_keys(K_GROUPS)) do
    local g = group(gid)
    if g then
      local ids = redis.call('ZRANGE', qkey(gid), 0, -1)
      for _, id in ipairs(ids) do
        local s = session(id)
        if s and s.queued_ms + g.max_wait_ms <= now then
          finish(s, '', 'waited too long')
          table.insert(fx.timed_out, { gid, s.customer })
        end
      end
    end
  end
  for _, id in ipairs(sorted_keys(K_AGENTS)) do
    local a = agent(id)
    if a and not a.connected and a.disconnected_ms > 0 and a.disconnected_ms + c.grace_ms <= now
      and (a.status ~= 'offline' or a.load > 0) then
      a.status = 'offline'
      dirty_a[id] = true
      requeue_all(id, 'agent disconnected')
    end
  end
  -- Every group's queue, for the queue-length metric; unchanged ones from
  -- their end, so no position update goes out for them.
  for _, gid in ipairs(sorted_keys(K_GROUPS)) do note_change(gid, redis.call('ZCARD', qkey(gid))) end
  -- What is due next (CsReply::Swept), before the assignment pass.
  local next_due, waiting, connected = nil, false, false
  local function due(t) if not next_due or t < next_due then next_due = t end end
  for _, gid in ipairs(sorted_keys(K_GROUPS)) do
    local g = group(gid)
    for _, id in ipairs(redis.call('ZRANGE', qkey(gid), 0, -1)) do
      local s = session(id)
      if s then
        waiting = true
        if g then due(s.queued_ms + g.max_wait_ms) end
      end
    end
  end
  for _, id in ipairs(sorted_keys(K_AGENTS)) do
    local a = agent(id)
    if a then
      if a.connected then connected = true end
      if not a.connected and a.disconnected_ms > 0 and (a.status ~= 'offline' or a.load > 0) then
        due(a.disconnected_ms + c.grace_ms)
      end
    end
  end
  return ok({ kind = 'swept', next_due_ms = next_due or 0, waiting = waiting, agents_connected = connected })
end

local handler = handlers[cmd.op]
if not handler then return redis.error_reply('dongdong: unknown cs command ' .. tostring(cmd.op)) end
-- The tenant's count of commands run (the outcome's version).
local version = redis.call('INCR', P .. 'version')
local reply = handler(cmd)
if reply.Ok then
  assign_pass()
  -- A request's reply reports where the session stands after the pass.
  if reply.Ok.kind == 'session' then
    local s = session(reply.Ok.session.id) or reply.Ok.session
    reply = session_reply(s, position(s))
  end
end

-- Past sessions of each party (Session::parties), newest last, as long as
-- the ended sessions are kept.
local function index_past(s)
  local ended = P .. 'ended'
  redis.call('ZADD', ended, s.ended_ms, s.id)
  redis.call('ZREMRANGEBYSCORE', ended, '-inf', '(' .. (now - retention * 1000))
  local seen = {}
  local parties = { s.customer }
  for _, a in ipairs(s.previous_agents) do table.insert(parties, a) end
  table.insert(parties, s.agent)
  for _, u in ipairs(parties) do
    if u ~= '' and not seen[u] then
      seen[u] = true
      local k = P .. 'h:' .. u
      redis.call('ZADD', k, s.ended_ms, s.id)
      redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. (now - retention * 1000))
      redis.call('EXPIRE', k, retention)
    end
  end
end

-- Write back everything the command touched.
for id in pairs(dirty_g) do
  if groups[id] then redis.call('HSET', K_GROUPS, id, cjson.encode(groups[id]))
  else redis.call('HDEL', K_GROUPS, id) end
end
for id in pairs(dirty_a) do
  if agents[id] then redis.call('HSET', K_AGENTS, id, cjson.encode(agents[id])) end
end
for id in pairs(dirty_s) do
  local s = sessions[id]
  if s then
    if s.state == 'ended' then
      redis.call('HDEL', K_OPEN, id)
      redis.call('SET', P .. 'S:' .. id, cjson.encode(s), 'EX', retention)
      index_past(s)
    else
      redis.call('HSET', K_OPEN, id, cjson.encode(s))
    end
  end
end
for id in pairs(dirty_l) do
  local m = left[id]
  if m then
    if m.claimed_by ~= '' then
      redis.call('HDEL', K_LEFT, id)
      redis.call('SET', P .. 'L:' .. id, cjson.encode(m), 'EX', retention)
    else
      redis.call('HSET', K_LEFT, id, cjson.encode(m))
    end
  end
end

-- Queue snapshots of the groups whose positions changed.
local queues = {}
for gid, from in pairs(fx.changes) do
  local waiting = {}
  local ids = redis.call('ZRANGE', qkey(gid), 0, -1)
  for _, id in ipairs(ids) do
    local s = session(id)
    table.insert(waiting, { id, s and s.customer or '' })
  end
  local free, online = 0, 0
  local g = group(gid)
  local avg = DEFAULT_HANDLE_MS
  if g then
    if g.avg_handle_ms ~= 0 then avg = g.avg_handle_ms end
    for _, m in ipairs(g.members) do
      local a = agent(m)
      if a and a.connected and a.status == 'online' then
        online = online + a.capacity
        free = free + math.max(0, a.capacity - a.load)
      end
    end
  end
  table.insert(queues, { group = gid, waiting = waiting, changed_from = from, avg_handle_ms = avg,
                         free_capacity = free, online_capacity = online })
end
table.sort(queues, function(a, b) return a.group < b.group end)

return cjson.encode({ version = version, reply = reply, assigned = fx.assigned, transferred = fx.transferred, ended = fx.ended,
                      timed_out = fx.timed_out, queues = queues })
