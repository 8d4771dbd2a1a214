"""The Lua scripts of :mod:`apientreprise_async.redis`: one atomic round trip per operation.

They reproduce :class:`~apientreprise_async.backends.InMemoryBackend`'s
bucket rules (``_Bucket.ready/take/learn/cap``) on Redis data. Every script
reads the time with ``TIME``, so all processes and hosts use one clock; times
travel as deltas from that ``now`` and the caller converts them to its own
anyio clock at the edge.

Per bucket (a hashed name ``B``):

- ``B`` (hash): ``limit``, ``confirmed``, ``granted`` (a sequence number),
  ``cap_left``, ``cap_until``, ``paused``, ``kn`` (number of known
  operations), ``k:<op>`` (operation known), ``p:<op>`` (probe lease end),
  ``w`` / ``q`` (someone waits for a release / for a time);
- ``B:o`` (sorted set): open slots, member = grant sequence, score = lease end:
  a process that dies with a slot open frees it when the lease ends;
- ``B:e`` (sorted set): occupancy ends of sent calls.

Times are written with ``%.6f``: Lua's default number format keeps 14 digits,
which at Unix-epoch magnitude would round away a tenth of a millisecond.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "CHECK", "ESTIMATE", "PAUSE", "RELEASE", "REPLAY", "SEED"]

_COMMON = r"""
local now
do
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local LEASE = tonumber(ARGV[1])
local IDLE = tonumber(ARGV[2])
local CHANNEL = ARGV[3]
local ORIGIN = ARGV[4]
-- The caller's epoch ('' if none yet), the highest tick it has seen in it, its
-- hold (longest occupancy it hands out), a fresh random id should an epoch be
-- born, and '1' if its wake-up listener is subscribed.
local MINE = ARGV[5]
local MINE_TICK = tonumber(ARGV[6])
local HOLD = tonumber(ARGV[7])
local FRESH = ARGV[8]
local LISTENING = ARGV[9] == '1'
local P = 9  -- the script's own arguments start at ARGV[P + 1]
local E = KEYS[1]
local EQ = 0  -- the epoch's quarantine: nothing is granted before it
local TICK = 0

local function fmt(x) return string.format('%.6f', x) end
local OUT = {'cap_at', 'outside', 'out_count', 'out_window', 'out_rate', 'out_prev',
             'out_span', 'out_burst', 'out_exact', 'out_exact_at'}

local function rate(b)
  if b.out_prev > b.out_rate then return b.out_prev end
  return b.out_rate
end

local function save_out(b)
  local args = {}
  for _, name in ipairs(OUT) do
    table.insert(args, name)
    table.insert(args, string.format('%.17g', b[name]))
  end
  redis.call('HSET', b.h, unpack(args))
end
local function int(x) return string.format('%d', x) end

-- A new epoch: the shared state was lost (or never existed). ``lost``: something
-- proves that it existed, so calls answered before now may still occupy slots
-- nobody records: nothing is granted for a hold. Every process that held the
-- old epoch replays its own sends into the new one when it next hears of it.
local function birth(lost)
  local q = 0
  if lost then q = now + HOLD end
  local tick = math.max(TICK, MINE_TICK) + 1
  redis.call('DEL', E)
  redis.call('HSET', E, 'id', FRESH, 'born', fmt(now), 'q', fmt(q), 'tick', int(tick))
  local heard = redis.call('PUBLISH', CHANNEL, ORIGIN .. ' e ' .. FRESH)
  if LISTENING then heard = heard - 1 end
  if not lost and heard > 0 then
    -- Others listen on this prefix, so they may hold sends of a Redis emptied
    -- since: give them a moment to say so (each one that does extends this).
    q = now + 0.5
    redis.call('HSET', E, 'q', fmt(q))
  end
  return {'E', FRESH, fmt(q - now)}
end

-- Check the epoch before anything else: nil if the caller's epoch is current,
-- else the reply telling it which one is.
local function epoch(nkeys)
  local ep = redis.call('HMGET', E, 'id', 'q', 'tick')
  if not ep[1] then
    local lost = MINE ~= ''
    for i = 2, nkeys do
      if not lost and redis.call('EXISTS', KEYS[i]) == 1 then lost = true end
    end
    return birth(lost)
  end
  if ep[1] ~= MINE then
    return {'E', ep[1], fmt(math.max(tonumber(ep[2]) - now, 0))}
  end
  TICK = tonumber(ep[3])
  if TICK < MINE_TICK then
    -- Writes this caller saw are gone: a replica that lagged was promoted.
    return birth(true)
  end
  EQ = tonumber(ep[2])
  TICK = redis.call('HINCRBY', E, 'tick', 1)
  return nil
end

-- The caller's replays are in: extend the quarantine to ``until`` if later.
local function quarantine(until_)
  if until_ > EQ then
    EQ = until_
    redis.call('HSET', E, 'q', fmt(EQ))
  end
end

-- Load bucket i (keys 3i-1 .. 3i+1), creating it as InMemoryBackend._bucket does.
-- Returns nil when its keys show a loss (evicted in part or whole): what is
-- left of them is dropped (every process writes its own calls back into the
-- new epoch) and the caller answers with birth(true).
local function bucket(i, limit_req, op, probe)
  local h, o, e = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local f = redis.call('HMGET', h, 'limit', 'confirmed', 'granted', 'cap_left',
                       'cap_until', 'paused', 'kn', 'no', 'ne')
  local b = {h = h, o = o, e = e}
  -- Others' use of the token (see watch); 0 stands for -inf among times.
  local g = redis.call('HMGET', h, unpack(OUT))
  for i, name in ipairs(OUT) do b[name] = tonumber(g[i] or 0) end
  local gone_o = redis.call('ZREMRANGEBYSCORE', o, '-inf', fmt(now))
  local gone_e = redis.call('ZREMRANGEBYSCORE', e, '-inf', fmt(now))
  b.open = redis.call('ZCARD', o)
  b.ends = redis.call('ZCARD', e)
  if not f[1] then
    -- New, or evicted: the epoch's register says until when it mattered.
    local known = tonumber(redis.call('HGET', E, 'b:' .. h) or 0)
    if known > now or b.open > 0 or b.ends > 0 then
      redis.call('DEL', h, o, e)
      return nil
    end
    b.limit = limit_req
    if op == '' or not probe then b.confirmed = 1 else b.confirmed = 0 end
    b.granted, b.cap_left, b.cap_until, b.paused, b.kn = 0, 0, 0, 0, 0
    redis.call('HSET', h, 'limit', int(b.limit), 'confirmed', b.confirmed, 'granted', 0,
               'no', 0, 'ne', 0)
  else
    if tonumber(f[8] or 0) - gone_o ~= b.open or tonumber(f[9] or 0) - gone_e ~= b.ends then
      redis.call('DEL', h, o, e)  -- one of its sorted sets was evicted
      return nil
    end
    b.limit = tonumber(f[1])
    b.confirmed = tonumber(f[2])
    b.granted = tonumber(f[3] or 0)
    b.cap_left = tonumber(f[4] or 0)
    b.cap_until = tonumber(f[5] or 0)
    b.paused = tonumber(f[6] or 0)
    b.kn = tonumber(f[7] or 0)
    if gone_o > 0 or gone_e > 0 then
      redis.call('HSET', h, 'no', b.open, 'ne', b.ends)
    end
    if b.confirmed == 0 and limit_req < b.limit then
      -- Two configurations share the key: the stricter guess wins.
      b.limit = limit_req
      redis.call('HSET', h, 'limit', int(b.limit))
    end
  end
  return b
end

-- Occupancy changes, keeping the counts that reveal an evicted sorted set.
local function open_slot(b, seq, until_)
  redis.call('ZADD', b.o, fmt(until_), seq)
  b.open = b.open + 1
  redis.call('HSET', b.h, 'no', b.open)
end

local function close_slot(b, seq)
  if redis.call('ZREM', b.o, seq) == 1 then
    b.open = b.open - 1
    redis.call('HSET', b.h, 'no', b.open)
  end
end

local function add_end(b, until_, member)
  if redis.call('ZADD', b.e, fmt(until_), member) == 1 then
    b.ends = b.ends + 1
    redis.call('HSET', b.h, 'ne', b.ends)
  end
end

-- Earliest grant time (nil: only a release can tell), as _Bucket.ready.
local function ready(b, op, probe)
  if probe and op ~= '' then
    if b.confirmed == 0 then
      if b.open > 0 then return nil end
    elseif redis.call('HEXISTS', b.h, 'k:' .. op) == 0 then
      if tonumber(redis.call('HGET', b.h, 'p:' .. op) or 0) > now then return nil end
    end
  end
  local free = b.limit - b.open
  if free <= 0 then return nil end
  local when = now
  local extra = b.ends - (free - 1)
  if extra > 0 then
    when = tonumber(redis.call('ZRANGE', b.e, extra - 1, extra - 1, 'WITHSCORES')[2])
  end
  if b.cap_until > now then
    local left = b.cap_left
    if left <= 0 then
      if b.cap_until > when then when = b.cap_until end
    elseif b.open > 0 and b.outside == 1 then
      -- Others use the token: the window's last slots may be theirs already.
      local endgame = b.limit * 0.05 + 1 + b.out_burst
      local age = now - b.cap_at
      -- Others may have called since the answer that set the cap.
      local stale = rate(b) * age
      if b.out_span > 0 and age > 0.05 * b.out_span and endgame > stale then
        stale = endgame  -- too old a word: ask again first
      end
      if left - stale <= endgame or 2 * stale > endgame then
        -- The endgame of a nearly spent server window (or an old word on it while
        -- others use the token): one call at a time.
        return nil
      end
    end
  elseif b.outside == 1 and b.open > 0 then
    -- A window whose use by others is unknown yet: one probe call first.
    return nil
  end
  if b.paused > when then when = b.paused end
  if EQ > when then when = EQ end
  return when
end

local function cap(b, remaining, reset, others)
  if reset <= now then return end
  local left = remaining - others
  if b.cap_until > now and math.abs(reset - b.cap_until) < 0.5 * (reset - now) then
    -- Same server window: each answer is a sound bound, the loosest is safe (less
    -- what others used since).
    local used = 0
    if b.outside == 1 then used = rate(b) * (now - b.cap_at) end
    if left >= b.cap_left - used then
      b.cap_left = left
      b.cap_at = now
    end
  elseif reset > b.cap_until then
    b.cap_until = reset
    b.cap_left = left
    b.cap_at = now
  end
  redis.call('HSET', b.h, 'cap_until', fmt(b.cap_until), 'cap_left', int(b.cap_left),
             'cap_at', fmt(b.cap_at))
end

-- From Remaining, how much of the server's window others (another program on
-- the same token) used: all our workers' calls are in this bucket, so whatever
-- else the window counted is theirs (a lower bound, exact once ours landed).
local function watch(b, limit, remaining, reset, opened, counted_from)
  if opened == nil or reset <= now then return end
  local span = reset - opened
  b.out_span = span
  if math.abs(reset - b.out_window) >= 0.5 * span then
    if reset < b.out_window then
      save_out(b)
      return  -- a late answer from a window already over
    end
    b.out_prev = b.out_rate
    b.out_window = reset
    b.out_count = 0
    b.out_rate = 0
    b.out_exact_at = 0
    b.out_burst = b.out_burst * 0.5  -- forget slowly a burst not seen again
  end
  local ours = b.open + redis.call('ZCOUNT', b.e, counted_from, '+inf')
  local seen = limit - remaining - ours
  if now - b.out_exact_at <= 0.05 * span then
    -- Shortly after an exact count, what others did beyond their rate: a burst.
    local burst = seen - b.out_exact - rate(b) * (now - b.out_exact_at)
    if burst > b.out_burst then b.out_burst = burst end
  end
  if b.open == 1 then
    b.out_exact = seen
    b.out_exact_at = now
  end
  if seen > b.out_count then
    b.out_count = seen
    b.outside = 1
  end
  if b.out_count > 0 then
    b.out_rate = b.out_count / math.max(now - opened, 0.1 * span)
  end
  save_out(b)
end

-- Keys live while they mean something, then IDLE seconds more.
-- The epoch's register keeps, per bucket, until when its state matters: should
-- its keys vanish before that (eviction), the next script sees the loss.
local function expire(b)
  local matters = 0
  local last = redis.call('ZRANGE', b.e, -1, -1, 'WITHSCORES')
  if last[2] then matters = tonumber(last[2]) end
  if b.open > 0 then
    local lease = tonumber(redis.call('ZRANGE', b.o, -1, -1, 'WITHSCORES')[2])
    if lease > matters then matters = lease end
  end
  if b.paused > matters then matters = b.paused end
  if matters > now then
    redis.call('HSET', E, 'b:' .. b.h, fmt(matters))
  else
    redis.call('HDEL', E, 'b:' .. b.h)
  end
  local horizon = now + LEASE
  if matters > horizon then horizon = matters end
  if b.cap_until > horizon then horizon = b.cap_until end
  local ms = math.ceil((horizon - now + IDLE) * 1000)
  redis.call('PEXPIRE', b.h, ms)
  redis.call('PEXPIRE', b.o, ms)
  redis.call('PEXPIRE', b.e, ms)
end

local function delta(t)
  if t == nil then return 'n' end
  return fmt(t - now)
end

-- What the caller mirrors for snapshots and for Permit.sending().
local function state(b, when)
  local paused, cap_until = '', ''
  if b.paused > now then paused = fmt(b.paused - now) end
  if b.cap_until > now then cap_until = fmt(b.cap_until - now) end
  -- The first open lease to end: a dead worker's slot frees then, with no release.
  local lease = ''
  if when == nil and b.open > 0 then
    lease = fmt(tonumber(redis.call('ZRANGE', b.o, 0, 0, 'WITHSCORES')[2]) - now)
  end
  return {delta(when), int(b.limit), b.confirmed, b.open, b.ends, int(b.cap_left),
          cap_until, paused, lease}
end
"""

#: Every script takes the common arguments first (lease, idle, channel, origin,
#: epoch, tick, hold, fresh id, listening), then its own; KEYS are the epoch
#: hash, then three keys per bucket. Every reply starts with the epoch's tick,
#: or is ``{'E', epoch id, quarantine delta}`` when the caller's epoch is not
#: the current one (nothing else was done).

#: ARGV: mode ('a' take, 'r' ready only), n, then per request: limit, op, probe.
ACQUIRE = (
    _COMMON
    + r"""
local take_now = ARGV[P + 1] == 'a'
local n = tonumber(ARGV[P + 2])
local bad = epoch(1 + 3 * n)
if bad then return bad end
local bs, reqs, whens = {}, {}, {}
local free = true
for i = 1, n do
  local base = P + 2 + 3 * (i - 1)
  local op, probe = ARGV[base + 2], ARGV[base + 3] == '1'
  local b = bucket(i, tonumber(ARGV[base + 1]), op, probe)
  if not b then return birth(true) end
  local when = ready(b, op, probe)
  bs[i], reqs[i], whens[i] = b, {op, probe}, when
  if when == nil or when > now then free = false end
end
local out = {int(TICK)}
if take_now and free then
  out[2] = 'g'
  for i = 1, n do
    local b, op, probe = bs[i], reqs[i][1], reqs[i][2]
    local mark = b.granted - b.open
    local seq = redis.call('HINCRBY', b.h, 'granted', 1)
    open_slot(b, seq, now + LEASE)
    if b.cap_until > now then
      b.cap_left = b.cap_left - 1
      redis.call('HSET', b.h, 'cap_left', int(b.cap_left))
    end
    local probing = 0
    if probe and op ~= '' and redis.call('HEXISTS', b.h, 'k:' .. op) == 0 then
      redis.call('HSET', b.h, 'p:' .. op, fmt(now + LEASE))
      probing = 1
    end
    expire(b)
    table.insert(out, int(mark))
    table.insert(out, int(seq))
    table.insert(out, probing)
    for _, v in ipairs(state(b, ready(b, op, probe))) do table.insert(out, v) end
  end
else
  out[2] = 'b'
  for i = 1, n do
    local b, when = bs[i], whens[i]
    -- Tell releases elsewhere that someone here waits (see RELEASE).
    if when == nil then redis.call('HSET', b.h, 'w', 1)
    elseif when > now then redis.call('HSET', b.h, 'q', 1) end
    expire(b)
    for _, v in ipairs(state(b, when)) do table.insert(out, v) end
  end
end
return out
"""
)

#: ARGV: end delta ('' if unsent), feedback ('' or limit), remaining, reset
#: delta, opened delta ('' unknown), counted-from delta ('' unknown), n, then
#: per request: limit, op, probe, seq, mark, probing, then the first request's
#: limit if the user set it (a ceiling), else ''. The first request's slot is
#: occupied until the reset when that comes before the end. Returns the tick, what the
#: answer taught ('', 'same', 'adopted', 'foreign'), then per request '1' if a
#: waiter was flagged and woken by a message, else '0'.
RELEASE = (
    _COMMON
    + r"""
local end_delta = ARGV[P + 1]
local has_fb = ARGV[P + 2] ~= ''
local n = tonumber(ARGV[P + 7])
local bad = epoch(1 + 3 * n)
if bad then return bad end
local bs = {}
for i = 1, n do
  local base = P + 7 + 6 * (i - 1)
  bs[i] = bucket(i, tonumber(ARGV[base + 1]), ARGV[base + 2], ARGV[base + 3] == '1')
  if not bs[i] then return birth(true) end
end
local learned = ''
local woke = {}
-- The first request's limit when the user set it: a ceiling the server may not raise.
local ceiling = tonumber(ARGV[P + 8 + 6 * n] or '')
for i = 1, n do
  local base = P + 7 + 6 * (i - 1)
  local op, probe = ARGV[base + 2], ARGV[base + 3] == '1'
  local seq, mark, probing = ARGV[base + 4], tonumber(ARGV[base + 5]), ARGV[base + 6] == '1'
  local b = bs[i]
  local occupied = nil
  if end_delta ~= '' then occupied = now + tonumber(end_delta) end
  if i == 1 and has_fb then
    local limit, remaining = tonumber(ARGV[P + 2]), tonumber(ARGV[P + 3])
    local reset = now + tonumber(ARGV[P + 4])
    if occupied and reset < occupied then
      -- The window that counted the call ends then: so does its occupancy.
      occupied = reset
    end
    local own = limit
    if ceiling and own > ceiling then own = ceiling end
    learned = 'same'
    local foreign = false
    if op ~= '' and own ~= b.limit then
      if b.confirmed == 1 and b.kn > 0 and redis.call('HEXISTS', b.h, 'k:' .. op) == 0 then
        learned = 'foreign'
        foreign = true
      else
        b.limit = math.max(own, 1)
        learned = 'adopted'
      end
    end
    if not foreign then
      b.confirmed = 1
      redis.call('HSET', b.h, 'limit', int(b.limit), 'confirmed', 1)
      if op ~= '' then
        if redis.call('HSETNX', b.h, 'k:' .. op, 1) == 1 then
          b.kn = b.kn + 1
          redis.call('HSET', b.h, 'kn', b.kn)
        end
        redis.call('HDEL', b.h, 'p:' .. op)
      end
      local opened, counted_from = nil, '+inf'
      if ARGV[P + 5] ~= '' then opened = now + tonumber(ARGV[P + 5]) end
      if ARGV[P + 6] ~= '' then counted_from = fmt(now + tonumber(ARGV[P + 6])) end
      watch(b, limit, remaining, reset, opened, counted_from)
      if b.outside == 1 or remaining < 0 then
        -- Calls open at this one's grant, or granted since, may reach the server after it.
        local granted = tonumber(redis.call('HGET', b.h, 'granted') or 0)
        cap(b, remaining, reset, granted - 1 - mark)
      end
      -- Otherwise every call the window counted is ours and holds a slot until it ends.
    end
  end
  if probing and op ~= '' then
    -- Without an answer showing the limit, the next call probes again.
    redis.call('HDEL', b.h, 'p:' .. op)
  end
  close_slot(b, seq)
  if end_delta == '' then
    if b.cap_until > now then
      b.cap_left = b.cap_left + 1  -- never reached the server: refund the cap
      redis.call('HSET', b.h, 'cap_left', int(b.cap_left))
    end
  else
    add_end(b, occupied, seq)
  end
  -- Wake waiters elsewhere only when it can help them: one waits for a
  -- release, a slot was freed for one waiting for a time, or the limit moved.
  -- The caller wakes its own waiters of the buckets marked '1' (it ignores its own
  -- messages): one of them may have set the flag, its reply still on the way.
  local flags = redis.call('HMGET', b.h, 'w', 'q')
  woke[i] = '0'
  if flags[1] or (flags[2] and end_delta == '')
      or (i == 1 and learned ~= '' and learned ~= 'same') then
    redis.call('HDEL', b.h, 'w', 'q')
    redis.call('PUBLISH', CHANNEL, ORIGIN .. ' w ' .. b.h)
    woke[i] = '1'
  end
  expire(b)
end
table.insert(woke, 1, learned)
table.insert(woke, 1, int(TICK))
return woke
"""
)

#: ARGV: limit, op, probe, feedback limit, remaining, reset delta.
SEED = (
    _COMMON
    + r"""
local bad = epoch(4)
if bad then return bad end
local op = ARGV[P + 2]
local b = bucket(1, tonumber(ARGV[P + 1]), op, ARGV[P + 3] == '1')
if not b then return birth(true) end
b.limit = math.max(tonumber(ARGV[P + 4]), 1)
b.confirmed = 1
redis.call('HSET', b.h, 'limit', int(b.limit), 'confirmed', 1)
if op ~= '' and redis.call('HSETNX', b.h, 'k:' .. op, 1) == 1 then
  b.kn = b.kn + 1
  redis.call('HSET', b.h, 'kn', b.kn)
end
cap(b, tonumber(ARGV[P + 5]), now + tonumber(ARGV[P + 6]), b.open)
expire(b)
return {int(TICK), 1}
"""
)

#: ARGV: until delta.
PAUSE = (
    _COMMON
    + r"""
local bad = epoch(4)
if bad then return bad end
if redis.call('EXISTS', KEYS[2]) == 0 then return {int(TICK), 0} end
local b = bucket(1, math.huge, '', false)
if not b then return birth(true) end
local until_ = now + tonumber(ARGV[P + 1])
if until_ <= b.paused then return {int(TICK), 0} end
b.paused = until_
redis.call('HSET', b.h, 'paused', fmt(until_))
expire(b)
redis.call('PUBLISH', CHANNEL, ORIGIN .. ' p ' .. b.h .. ' ' .. ARGV[P + 1])
return {int(TICK), 1}
"""
)

#: ARGV: limit, op, probe, position, hold.
ESTIMATE = (
    _COMMON
    + r"""
local bad = epoch(4)
if bad then return bad end
local b = bucket(1, tonumber(ARGV[P + 1]), ARGV[P + 2], ARGV[P + 3] == '1')
if not b then return birth(true) end
local position, hold = tonumber(ARGV[P + 4]), tonumber(ARGV[P + 5])
local limit = math.max(b.limit, 1)
-- frees, sorted: 'idle' times now, then the ends (before now + hold, those
-- in flight, then later ends), each free slot taken in turn.
local idle = math.max(limit - b.open - b.ends, 0)
local total = idle + b.ends + b.open
local rounds = math.floor(position / limit)
local index = math.min(position - rounds * limit, total - 1)
local when
if index < idle then
  when = now
else
  local j = index - idle
  local early = redis.call('ZCOUNT', b.e, '-inf', fmt(now + hold))
  if j < early then
    when = tonumber(redis.call('ZRANGE', b.e, j, j, 'WITHSCORES')[2])
  elseif j < early + b.open then
    when = now + hold
  else
    local k = j - b.open
    when = tonumber(redis.call('ZRANGE', b.e, k, k, 'WITHSCORES')[2])
  end
end
when = when + rounds * hold
if b.cap_until > now and position >= b.cap_left and b.cap_until > when then
  when = b.cap_until
end
if b.paused > when then when = b.paused end
if EQ > when then when = EQ end
if now > when then when = now end
expire(b)
return {int(TICK), fmt(when - now)}
"""
)

#: A process's own sends, written into the current epoch (after a loss, or on
#: its return from local limits). ARGV: quarantine ('l': the state was lost,
#: 'r': back from local limits, '': neither), member prefix, n, then per bucket:
#: limit, op, probe, calls in flight, number of ends, then those end deltas.
#: Returns the tick, then a new sequence number per call in flight.
REPLAY = (
    _COMMON
    + r"""
local n = tonumber(ARGV[P + 3])
local bad = epoch(1 + 3 * n)
if bad then return bad end
local why = ARGV[P + 1]
if why == 'l' then
  quarantine(tonumber(redis.call('HGET', E, 'born')) + HOLD)
elseif why == 'r' then
  quarantine(now + HOLD)
end
local out = {int(TICK)}
local at = P + 4
for i = 1, n do
  local b = bucket(i, tonumber(ARGV[at]), ARGV[at + 1], ARGV[at + 2] == '1')
  if not b then return birth(true) end
  local flying, ends = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  at = at + 5
  for _ = 1, flying do
    local seq = redis.call('HINCRBY', b.h, 'granted', 1)
    open_slot(b, seq, now + LEASE)
    table.insert(out, int(seq))
  end
  for j = 1, ends do
    add_end(b, now + tonumber(ARGV[at]), ARGV[P + 2] .. i .. ':' .. j)
    at = at + 1
  end
  expire(b)
end
return out
"""
)

#: Only the epoch check (after a reconnection, or when another process announced
#: a new epoch). Returns the tick.
CHECK = (
    _COMMON
    + r"""
local bad = epoch(1)
if bad then return bad end
return {int(TICK)}
"""
)
