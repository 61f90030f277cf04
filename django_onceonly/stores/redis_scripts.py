"""The Lua scripts of ``RedisStore``: one per step, each atomic on the server.

Built from the record's field names (``FIELDS``): a script reads a record with
``load()`` (every field) or ``load_own()`` (``OWN_FIELDS``, for the owner's steps) and
indexes it by name; the names are turned into positions when the script is built, so
nothing here depends on the order of ``Record``'s fields.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError

from .base import RECORD_FIELDS, STATUSES

# The hash fields of a record. Scripts and readers go by these names, never by position.
FIELDS = RECORD_FIELDS
# The error a script raises when the record under its key cannot be read.
DAMAGED_REPLY = "ONCEONLY_DAMAGED "

# -- the scripts -------------------------------------------------------------------------
# KEYS[1] is the record; KEYS[2] and KEYS[3] (the shard's dirty hash and its counter)
# are passed only when the audit trail is on. ARGV[1] is always the record's member name
# in the dirty hash (JSON [scope, key]). Numbers stay strings: Lua's tostring() would
# print microsecond timestamps in exponent notation. Scripts read a record with a loader
# and index it by name; a loader stops the script, before any write, when the record is
# damaged: a Lua error whose text starts with DAMAGED_REPLY.


def _lua_set(names: Sequence[str]) -> str:
    return "{" + ", ".join(f"{name} = true" for name in names) + "}"


# Fields the scripts compare or increment as numbers: a loader refuses a record where
# one is not an integer.
NUMBERS = ("expires_at", "lease_expires_at", "duplicates_blocked")
# What the owner's steps (finish, release, extend, release if unchanged) read: the
# fields they decide on and every field a loader checks. Each field costs an HMGET about
# 0.15 µs, so they do not read the other ten.
OWN_FIELDS = ("status", "owner_token", "result", "error", *NUMBERS)
# A script indexes what load() read as F.<name> and what load_own() read as O.<name>;
# Script() writes each of these as the field's position (Lua counts from 1), so no table
# of positions is built on every call.
_LAYOUTS = {"F": FIELDS, "O": OWN_FIELDS}
_POSITION = re.compile(r"\b([FO])\.([a-z_]+)\b")


def _positions(source: str) -> str:
    def number(match: re.Match[str]) -> str:
        return str(_LAYOUTS[match.group(1)].index(match.group(2)) + 1)

    return _POSITION.sub(number, source)


def _loader(name: str, layout: str) -> str:
    """The Lua function ``name()``: an HMGET of the fields of ``layout``, checked.

    It returns the values in that order (false for a missing field), or nil when there
    is no record. It stops the script, before anything is written, when the key holds
    something the scripts cannot work on; Python checks the rest when it reads a reply.
    """
    fields = ", ".join(f"'{field}'" for field in _LAYOUTS[layout])
    numbers = "\n".join(
        f"  if v[{layout}.{field}] and not string.match(v[{layout}.{field}], '^%-?%d+$') then\n"
        f"    damaged('{field} is not an integer')\n"
        "  end"
        for field in NUMBERS
    )
    return f"""
local function {name}()
  local v = redis.pcall('HMGET', rec, {fields})
  if v.err then
    damaged('the key holds a Redis ' .. redis.call('TYPE', rec)['ok'] .. ', not a hash')
  end
  local status = v[{layout}.status]
  if not status then
    if redis.call('EXISTS', rec) == 0 then return nil end
    damaged('no status field')
  end
  if not STATUSES[status] then damaged('status is not a status') end
  if not v[{layout}.owner_token] or v[{layout}.owner_token] == '' then
    damaged('no owner_token field')
  end
{numbers}
  return v
end"""


_COMMON = (
    """
local rec = KEYS[1]
local STATUSES = @STATUSES@
local function mark(kind)
  if #KEYS >= 3 then
    local seq = redis.call('INCR', KEYS[3])
    redis.call('HSET', KEYS[2], ARGV[1], kind .. seq)
  end
end
local function damaged(detail)
  error({err = '@DAMAGED@' .. detail})
end
-- load(): every field, in FIELDS order; load_own(): the OWN_FIELDS.
@LOADERS@
-- {outcome, JSON array of the fields in FIELDS order (false for a missing one, the
-- result left out), result or false}: one bulk string parses much faster than many.
local function reply(outcome, v)
  local result = v[F.result]
  v[F.result] = false
  return {outcome, cjson.encode(v), result}
end
""".replace("@LOADERS@", _loader("load", "F") + _loader("load_own", "O"))
    .replace("@STATUSES@", _lua_set(STATUSES))
    .replace("@DAMAGED@", DAMAGED_REPLY)
)

# ARGV: member, now, token, lease_expires_at, after_lease, fingerprint, metadata,
# task_name, task_id, scope, key, utc offset text for the hold message, resume_token.
# Reply: {outcome} for a new record, else reply(outcome, the record as it is now).
_CLAIM = """
local now = tonumber(ARGV[2])
local token = ARGV[3]
local v -- the record, once load() has read it
local function create()
  redis.call('HSET', rec, 'scope', ARGV[10], 'key', ARGV[11], 'status', 'in_progress',
    'owner_token', token, 'fingerprint', ARGV[6], 'error', '', 'task_name', ARGV[8],
    'task_id', ARGV[9], 'metadata', ARGV[7], 'created_at', ARGV[2], 'updated_at', ARGV[2],
    'lease_expires_at', ARGV[4], 'duplicates_blocked', '0')
  mark('w')
  return {'acquired'}
end
local function answer(outcome)
  mark('w')
  return reply(outcome, v)
end
-- civil date of a day count (H. Hinnant's algorithm), for the hold message
local function utc(micros)
  local s = math.floor(tonumber(micros) / 1000000)
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d %02d:%02d:%02d', y, m, d,
    math.floor(rem / 3600), math.floor((rem % 3600) / 60), rem % 60)
end

-- A new key, the common case: one EXISTS rather than an HMGET of every field.
if redis.call('EXISTS', rec) == 0 then
  return create()
end
v = load()
if not v then
  return create()
end
if v[F.expires_at] and tonumber(v[F.expires_at]) <= now then
  -- past its expiry: absent, whoever owned it
  redis.call('DEL', rec)
  return create()
end
local status = v[F.status]
local owner = v[F.owner_token]
if status == 'in_progress' and (owner == token or (ARGV[13] ~= '' and owner == ARGV[13])) then
  -- the owner's own earlier claim (a Celery retry hands it over to its new token), or
  -- this very claim again (redis-py resent a command whose reply was lost): stale or not
  redis.call('HSET', rec, 'owner_token', token, 'lease_expires_at', ARGV[4],
    'updated_at', ARGV[2])
  v[F.owner_token] = token
  v[F.lease_expires_at] = ARGV[4]
  v[F.updated_at] = ARGV[2]
  return answer('resumed')
end
local lease = v[F.lease_expires_at]
if status == 'in_progress' and lease and tonumber(lease) <= now then
  if ARGV[5] == 'hold' then
    v[F.status] = 'unknown'
    v[F.error] = 'lease ended at ' .. utc(lease) .. ARGV[12] .. ' without an outcome;'
      .. ' the owner may have crashed after acting. Release it to run again.'
    v[F.updated_at] = ARGV[2]
    v[F.last_duplicate_at] = ARGV[2]
    redis.call('HSET', rec, 'status', v[F.status], 'error', v[F.error], 'updated_at', ARGV[2],
      'last_duplicate_at', ARGV[2])
    v[F.duplicates_blocked] = tostring(redis.call('HINCRBY', rec, 'duplicates_blocked', 1))
    return answer('held')
  end
  local seen = v[F.fingerprint] or ''
  if ARGV[6] == '' or seen == '' or seen == ARGV[6] then
    redis.call('HSET', rec, 'owner_token', token, 'fingerprint', ARGV[6],
      'task_name', ARGV[8], 'task_id', ARGV[9], 'metadata', ARGV[7],
      'updated_at', ARGV[2], 'lease_expires_at', ARGV[4])
    v[F.owner_token] = token
    v[F.fingerprint] = ARGV[6]
    v[F.task_name] = ARGV[8]
    v[F.task_id] = ARGV[9]
    v[F.metadata] = ARGV[7]
    v[F.updated_at] = ARGV[2]
    v[F.lease_expires_at] = ARGV[4]
    return answer('reclaimed')
  end
end
-- a duplicate: read only (Python buffers the count, ADD_DUPLICATES writes it later)
return reply('duplicate', v)
"""

# ARGV: member, created_at, count, last_at. Adds buffered duplicate counts to the record
# only if it is still the one they were blocked by (same created_at): never recreates a
# deleted record nor counts against one claimed afresh since. Reply: 1 if counted, else 0.
_ADD_DUPLICATES = """
local v = redis.pcall('HMGET', rec, 'created_at', 'last_duplicate_at')
if v.err or v[1] ~= ARGV[2] then return 0 end
local n = redis.pcall('HINCRBY', rec, 'duplicates_blocked', ARGV[3])
if type(n) == 'table' and n.err then return 0 end  -- a damaged counter: left as it is
if not v[2] or not tonumber(v[2]) or tonumber(v[2]) < tonumber(ARGV[4]) then
  redis.call('HSET', rec, 'last_duplicate_at', ARGV[4])
end
mark('w')
return 1
"""

# ARGV: member. Reply: false, or reply('found', the record).
_GET = """
local v = load()
if not v then return false end
return reply('found', v)
"""

# ARGV: member, token, status, result ('' when has_result is '0'), has_result, error,
# now, expires_at ('' for never), milliseconds until Redis may drop it.
_FINISH = """
local v = load_own()
if not v or v[O.owner_token] ~= ARGV[2] then return 0 end
local status = v[O.status]
if status ~= 'in_progress' and status ~= 'unknown' then
  -- the same outcome again from its owner is a retried command whose reply was lost
  local stored = v[O.result]
  local same_result = (ARGV[5] == '1' and stored == ARGV[4]) or (ARGV[5] == '0' and not stored)
  if status == ARGV[3] and same_result and v[O.error] == ARGV[6] then return 1 end
  return 0
end
if ARGV[5] == '1' and ARGV[8] ~= '' then
  -- the common case, a result and an expiry: one write
  redis.call('HSET', rec, 'status', ARGV[3], 'error', ARGV[6], 'updated_at', ARGV[7],
    'completed_at', ARGV[7], 'result', ARGV[4], 'expires_at', ARGV[8])
  redis.call('HDEL', rec, 'lease_expires_at')
else
  redis.call('HSET', rec, 'status', ARGV[3], 'error', ARGV[6], 'updated_at', ARGV[7],
    'completed_at', ARGV[7])
  if ARGV[5] == '1' then
    redis.call('HSET', rec, 'result', ARGV[4])
  else
    redis.call('HDEL', rec, 'result')
  end
  if ARGV[8] ~= '' then
    redis.call('HSET', rec, 'expires_at', ARGV[8])
    redis.call('HDEL', rec, 'lease_expires_at')
  else
    redis.call('HDEL', rec, 'lease_expires_at', 'expires_at')
  end
end
if ARGV[8] ~= '' then
  redis.call('PEXPIRE', rec, ARGV[9])
else
  redis.call('PERSIST', rec)
end
mark('w')
return 1
"""

# ARGV: member, token
_RELEASE = """
local v = load_own()
if not v or v[O.owner_token] ~= ARGV[2] then return 0 end
if v[O.status] ~= 'in_progress' and v[O.status] ~= 'unknown' then return 0 end
redis.call('DEL', rec)
mark('d')
return 1
"""

# ARGV: member, token, lease_expires_at, now
_EXTEND = """
local v = load_own()
if not v or v[O.owner_token] ~= ARGV[2] or v[O.status] ~= 'in_progress' then return 0 end
redis.call('HSET', rec, 'lease_expires_at', ARGV[3], 'updated_at', ARGV[4])
mark('w')
return 1
"""

# ARGV: member, owner_token, status, allow_live ('1' or '0'), now
_RELEASE_IF_UNCHANGED = """
local v = load_own()
if not v or v[O.status] ~= ARGV[3] or v[O.owner_token] ~= ARGV[2] then return 0 end
local lease = v[O.lease_expires_at]
if ARGV[4] ~= '1' and ARGV[3] == 'in_progress' and lease and tonumber(lease) > tonumber(ARGV[5]) then
  return 0
end
redis.call('DEL', rec)
mark('d')
return 1
"""

# ARGV: member. Deletes whatever the key holds, a damaged record included.
_FORCE_RELEASE = """
local n = redis.call('DEL', rec)
if n == 1 then mark('d') end
return n
"""


class Script:
    """A Lua script run with ``EVALSHA``, loaded on the first ``NOSCRIPT`` (one round trip)."""

    def __init__(self, body: str, *, common: bool = True) -> None:
        self.source = _positions(_COMMON + body if common else body)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def load(self, conn: Redis) -> None:
        """Make sure the server knows the script, before queueing it in a pipeline."""
        if not conn.script_exists(self.sha)[0]:
            conn.script_load(self.source)

    def __call__(self, conn: Redis, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            return conn.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # A restarted or flushed server forgot it. NOSCRIPT means nothing ran.
            conn.script_load(self.source)
            return conn.evalsha(self.sha, len(keys), *keys, *args)


CLAIM = Script(_CLAIM)
ADD_DUPLICATES = Script(_ADD_DUPLICATES)
GET = Script(_GET)
FINISH = Script(_FINISH)
RELEASE = Script(_RELEASE)
EXTEND = Script(_EXTEND)
FORCE_RELEASE = Script(_FORCE_RELEASE)
RELEASE_IF_UNCHANGED = Script(_RELEASE_IF_UNCHANGED)
