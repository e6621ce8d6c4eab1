"""Lua scripts: every check-then-act on Redis runs atomically on the server.

Settling a delivery is owner-checked where a stale settle would do harm: the
entry's ``XPENDING`` record must still name this consumer and this delivery's
count (a reclaim by anyone, this consumer included, raises the count).
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["Scripts"]

# Shared by the scripts that settle a delivery: ARGV[1] group, [2] consumer, [3] id,
# [4] the delivery's count. Returns true while the delivery is the current one.
_OWNED = """
local function owned(stream)
  local p = redis.call('XPENDING', stream, ARGV[1], ARGV[3], ARGV[3], 1)
  return #p == 1 and p[1][2] == ARGV[2] and p[1][4] == tonumber(ARGV[4])
end
"""

# Producer dedup for QoS 2: KEYS[1] stream, KEYS[2..] dedup keys; ARGV[1] window ms,
# ARGV[2..] encoded envelopes (one per dedup key). Returns how many were added.
PUBLISH_ONCE = """
local added = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'm', ARGV[i])
    added = added + 1
  end
end
return added
"""

# publish_many at QoS 1 / QoS 0: KEYS[1] stream or channel; ARGV encoded envelopes.
# One command for the batch: redis-py spends more time packing and parsing a
# pipeline's N commands than Redis spends running them.
XADD_MANY = """
for i = 1, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'm', ARGV[i])
end
return #ARGV
"""

PUBLISH_MANY = """
local receivers = 0
for i = 1, #ARGV do
  receivers = receivers + redis.call('PUBLISH', KEYS[1], ARGV[i])
end
return receivers
"""

# nack / in_progress: KEYS[1] stream; ARGV[5] the idle time to set, in ms. XCLAIM
# JUSTID keeps the delivery count; the idle time decides when XAUTOCLAIM takes it.
TOUCH = (
    _OWNED
    + """
if not owned(KEYS[1]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[5], 'JUSTID')
return 1
"""
)

# dead_letter: KEYS[1] stream, KEYS[2] dead-letter stream; ARGV[5] reason, [6] time,
# [7] dlq max length. Copies the entry's fields, adds why, acks it: one step.
DEAD_LETTER = (
    _OWNED
    + """
if not owned(KEYS[1]) then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
local f = {}
if #e == 1 then f = e[1][2] end
table.insert(f, 'catga-reason'); table.insert(f, ARGV[5])
table.insert(f, 'catga-count'); table.insert(f, ARGV[4])
table.insert(f, 'catga-at'); table.insert(f, ARGV[6])
table.insert(f, 'catga-id'); table.insert(f, ARGV[3])
table.insert(f, 'catga-group'); table.insert(f, ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[7], '*', unpack(f))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
)

# Take over idle entries: KEYS[1] stream, KEYS[2] dead-letter stream; ARGV[1] group,
# [2] consumer, [3] min idle ms, [4] cursor, [5] count, [6] max deliveries, [7] reason,
# [8] time, [9] dlq max length. Returns {cursor, {{id, fields, count}...}, dead}:
# entries past max deliveries are dead-lettered here, with the deliveries they had.
CLAIM = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                     'COUNT', ARGV[5])
local out, dead = {}, 0
for _, e in ipairs(r[2]) do
  local id = e[1]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local n = p[1][4]
  if n > tonumber(ARGV[6]) then
    local f = e[2]
    table.insert(f, 'catga-reason'); table.insert(f, ARGV[7])
    table.insert(f, 'catga-count'); table.insert(f, tostring(n - 1))
    table.insert(f, 'catga-at'); table.insert(f, ARGV[8])
    table.insert(f, 'catga-id'); table.insert(f, id)
    table.insert(f, 'catga-group'); table.insert(f, ARGV[1])
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[9], '*', unpack(f))
    redis.call('XACK', KEYS[1], ARGV[1], id)
    dead = dead + 1
  else
    table.insert(out, {id, e[2], n})
  end
end
return {r[1], out, dead}
"""

# Trim what no group needs: KEYS[1] stream; ARGV[1] retention ms, ARGV[2] idle ms.
# Entries below the oldest pending entry and the last-delivered id of every group,
# and older than the retention, go (XTRIM MINID never reaches a pending or unread
# entry). Consumers with nothing pending and idle longer than ARGV[2] (processes
# that are gone) are removed; a live one that reads again is recreated by Redis.
TRIM = """
local function before(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local floor = string.format('%d-0', now - tonumber(ARGV[1]))
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local keep = info['last-delivered-id']
  if info['pending'] > 0 then
    keep = redis.call('XPENDING', KEYS[1], info['name'], '-', '+', 1)[1][1]
  end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], info['name'])) do
    local ci = {}
    for i = 1, #c, 2 do ci[c[i]] = c[i + 1] end
    if ci['pending'] == 0 and ci['idle'] > tonumber(ARGV[2]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], info['name'], ci['name'])
    end
  end
  if before(keep, floor) then floor = keep end
end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
"""

# Replay a dead letter: KEYS[1] stream, KEYS[2] dead-letter stream; ARGV[1] its id.
# Re-adds the original fields (not catga's notes) and deletes the dead letter, in one
# step. Returns 1, 0 when there is no such dead letter, -1 when it holds no fields.
REPLAY = """
local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
local f, out = e[1][2], {}
for i = 1, #f, 2 do
  if string.sub(f[i], 1, 6) ~= 'catga-' then
    table.insert(out, f[i]); table.insert(out, f[i + 1])
  end
end
if #out == 0 then return -1 end
redis.call('XADD', KEYS[1], '*', unpack(out))
redis.call('XDEL', KEYS[2], ARGV[1])
return 1
"""

# Drop a consumer only if nothing is pending under it (DELCONSUMER would drop its
# pending entries). KEYS[1] stream; ARGV[1] group, ARGV[2] consumer.
FORGET_CONSUMER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""

# Idempotency store. A key holds 'p' .. token while leased, 'd' .. result when done.
# One call runs a batch of operations, one per key; ARGV[i] frames operation i as
# op (c, e, r or d: claim, extend, release, done) .. ms .. ' ' .. #token .. ' ' ..
# token .. result: one argument per operation, because redis-py's cost per argument
# dominated the QoS 2 profile. claim -> {1} acquired, {0} busy, {2, result} done;
# the others -> 1 if the token owned the key (and the op was applied), else 0.
STORE_BATCH = """
local out = {}
for i = 1, #KEYS do
  local k, a = KEYS[i], ARGV[i]
  local op = string.sub(a, 1, 1)
  local s1 = string.find(a, ' ', 2, true)
  local s2 = string.find(a, ' ', s1 + 1, true)
  local ms = string.sub(a, 2, s1 - 1)
  local n = tonumber(string.sub(a, s1 + 1, s2 - 1))
  local token = string.sub(a, s2 + 1, s2 + n)
  local v = redis.call('GET', k)
  if op == 'c' then
    if not v then
      redis.call('SET', k, 'p' .. token, 'PX', ms)
      out[i] = {1}
    elseif string.sub(v, 1, 1) == 'd' then
      out[i] = {2, string.sub(v, 2)}
    else
      out[i] = {0}
    end
  elseif v ~= 'p' .. token then
    out[i] = 0
  else
    if op == 'e' then
      redis.call('PEXPIRE', k, ms)
    elseif op == 'd' then
      redis.call('SET', k, 'd' .. string.sub(a, s2 + n + 1), 'PX', ms)
    else
      redis.call('DEL', k)
    end
    out[i] = 1
  end
end
return out
"""


class Scripts:
    """The transport's scripts registered on one client (EVALSHA, loaded on NOSCRIPT)."""

    def __init__(self, client: Redis) -> None:
        self.publish_once: AsyncScript = client.register_script(PUBLISH_ONCE)
        self.xadd_many: AsyncScript = client.register_script(XADD_MANY)
        self.publish_many: AsyncScript = client.register_script(PUBLISH_MANY)
        self.touch: AsyncScript = client.register_script(TOUCH)
        self.dead_letter: AsyncScript = client.register_script(DEAD_LETTER)
        self.claim: AsyncScript = client.register_script(CLAIM)
        self.trim: AsyncScript = client.register_script(TRIM)
        self.forget_consumer: AsyncScript = client.register_script(FORGET_CONSUMER)
        self.replay: AsyncScript = client.register_script(REPLAY)
