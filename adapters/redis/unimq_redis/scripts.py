"""Lua scripts: each runs atomically on the server, so several consumers can run them at once.

Redis 6.2+ (XAUTOCLAIM); the 7.0 reply of XAUTOCLAIM has a third element, the ids of pending
entries that were deleted from the stream (Redis drops them from the PEL itself), which we ignore.
"""

#: An idle time far in the past (10 years in ms): an entry XCLAIMed with it is reclaimable at once.
RELEASED_IDLE = 315_360_000_000

#: The pending-entries owner used when a closing consumer hands its messages back.
RELEASED_CONSUMER = "unimq-released"

# KEYS: stream, delayed-sends zset, delayed-retries zset (of this group)
# ARGV: group, consumer, min idle ms, count, cursor, now ms, maxlen (0 = none)
# Moves due delayed sends into the stream (all groups), re-opens due delayed retries in this
# group's PEL with their delivery count (XCLAIM FORCE RETRYCOUNT), then reclaims idle entries
# with XAUTOCLAIM and reads each claimed entry's delivery count from XPENDING.
# Returns {next cursor, {{id, fields, count}...}, next due ms or false}.
MAINTAIN = """
local stream, sends, retries = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, idle, count, cursor, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local maxlen = tonumber(ARGV[7])
for _, m in ipairs(redis.call('ZRANGEBYSCORE', sends, '-inf', now, 'LIMIT', 0, 256)) do
  if redis.call('ZREM', sends, m) == 1 then
    local f = cmsgpack.unpack(m)
    if maxlen > 0 then
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(f, 2))
    else
      redis.call('XADD', stream, '*', unpack(f, 2))
    end
  end
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', retries, '-inf', now, 'LIMIT', 0, 256)) do
  if redis.call('ZREM', retries, m) == 1 then
    local id, n = string.match(m, '^(.-)/(%d+)$')
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'IDLE', '""" + str(RELEASED_IDLE) + """',
               'RETRYCOUNT', n, 'FORCE', 'JUSTID')
  end
end
local res = redis.call('XAUTOCLAIM', stream, group, consumer, idle, cursor, 'COUNT', count)
local out = {}
for _, e in ipairs(res[2]) do
  if e and e[2] then
    local p = redis.call('XPENDING', stream, group, e[1], e[1], 1)
    local n = 1
    if p[1] then n = p[1][4] end
    out[#out + 1] = {e[1], e[2], n}
  end
end
local due = false
for _, key in ipairs({sends, retries}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] and (not due or tonumber(first[2]) < tonumber(due)) then due = first[2] end
end
return {res[1], out, due}
"""

# KEYS: stream.  ARGV: group, consumer, idle ms, id...
# XCLAIM (JUSTID, so the delivery count is unchanged) the ids this consumer still owns, setting
# their idle time: 0 extends the lock, RELEASED_IDLE makes them reclaimable now (nack).
# An id another consumer reclaimed meanwhile is left alone. Returns how many were claimed.
CLAIM_OWN = """
local stream, group, consumer, idle = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local n = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == consumer then
    redis.call('XCLAIM', stream, group, consumer, 0, ARGV[i], 'IDLE', idle, 'JUSTID')
    n = n + 1
  end
end
return n
"""

# KEYS: stream, delayed-retries zset.  ARGV: group, consumer, id, due ms
# nack(delay): if this consumer still owns the entry, XACK it and schedule "<id>/<count>"; the
# mover (MAINTAIN) re-opens it in the PEL at the due time with the same delivery count.
RETRY_LATER = """
local stream, retries, group, consumer, id = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local p = redis.call('XPENDING', stream, group, id, id, 1)
if not p[1] or p[1][2] ~= consumer then return 0 end
redis.call('ZADD', retries, ARGV[4], id .. '/' .. p[1][4])
redis.call('XACK', stream, group, id)
return 1
"""

# KEYS: stream.  ARGV: group, consumer
# close(): hand every entry this consumer owns to RELEASED_CONSUMER, reclaimable at once, then
# delete the consumer (deleting it while it owns entries would drop them from the PEL).
RELEASE_ALL = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local n = 0
while true do
  local pending = redis.call('XPENDING', stream, group, '-', '+', 500, consumer)
  if #pending == 0 then break end
  for _, p in ipairs(pending) do
    redis.call('XCLAIM', stream, group, '""" + RELEASED_CONSUMER + """', 0, p[1],
               'IDLE', '""" + str(RELEASED_IDLE) + """', 'JUSTID')
    n = n + 1
  end
end
redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
return n
"""

# KEYS: target (stream or delayed zset), dedup key.  ARGV: window ms, score (0 = XADD), maxlen,
# then either the packed member (score > 0) or field, value, ...
# De-duplicated send: SET NX PX opens the window; only the first message with the id is written.
DEDUP_SEND = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local score, maxlen = tonumber(ARGV[2]), tonumber(ARGV[3])
if score > 0 then
  redis.call('ZADD', KEYS[1], score, ARGV[4])
elseif maxlen > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 4))
else
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
end
return 1
"""
