"""``RedisStore``: records in Redis through django-redis, one server-side script per step.

Every operation is one ``EVALSHA`` of a Lua script, so it is atomic and costs one round
trip: claim (which, on a duplicate, counts it and returns the stored record in the same
reply), finish, release, extend and force-release. Taking over an expired record or a
stale lease happens inside the claim script; there is no second step to race.

Key layout (``make_key`` of the cache adds its ``KEY_PREFIX`` and ``VERSION``)::

    {onceonly:<ab>}:r:<rest of digest>   hash: one record
    {onceonly:<ab>}:dirty                hash: records changed since the audit sync
    {onceonly:<ab>}:seq                  counter: makes every change marker unique

``<ab><rest>`` is the SHA-256 of ``[scope, key]`` (keys may contain braces, so they are
never put in a hash tag themselves). The ``{onceonly:<ab>}`` hash tag puts a record and
its shard's audit keys in one Redis Cluster slot, so each script touches a single slot.

Times are stored as integer microseconds since the epoch and every comparison uses the
``now`` the :class:`~django_onceonly.locks.Lock` layer passes, exactly as
``DatabaseStore`` does. Finished records also get a Redis expiry so Redis deletes them
by itself; it is set relative to ``now`` (``PEXPIRE``), so a clock difference between
the application and Redis cannot delete a record early.

The audit trail: each script also marks the record dirty in its shard, in the same
atomic step. :func:`django_onceonly.stores.audit.sync_audit` (``manage.py onceonly_sync``)
copies dirty records to ``IdempotencyRecord`` in batches, so the admin shows intents
with this store too. Set ``audit = False`` on a subclass to keep nothing but Redis.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django_redis import get_redis_connection
from redis import Redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..conf import conf
from ..exceptions import DamagedRecord, StoreUnavailable
from ..rules import Status
from .base import (
    RECORD_FIELDS,
    STATUSES,
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Record,
)

SHARDS = 256
# The hash fields of a record. Scripts and readers go by these names, never by position.
FIELDS = RECORD_FIELDS
# Redis answers these when it is up but cannot take the write; nothing was written.
# (redis-py turns OOM, READONLY, TRYAGAIN and LOADING into exception classes of their own.)
UNAVAILABLE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    TryAgainError,
)
UNAVAILABLE_REPLIES = ("MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS", "MISCONF")
# The error a script raises when the record under its key cannot be read.
DAMAGED_REPLY = "ONCEONLY_DAMAGED "
# Finished records outlive their expiry in Redis by this much while the audit trail is
# on, so that a lagging sync still copies their final state before Redis drops them.
# Claims treat them as absent from expires_at exactly.
AUDIT_GRACE_MS = 300_000

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_micros(value: dt.datetime) -> int:
    """Microseconds since the epoch; a naive datetime is read as UTC.

    Naive datetimes go in and come out unchanged (see :func:`record_from_values`), so
    comparisons between them hold; only differences of times ever reach Redis's clock.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _text(raw: bytes | str | bool | None) -> str:
    if raw is None or raw is False or raw is True:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw


def record_from_values(
    values: Sequence[bytes | str | bool | None], result: bytes | str | None = None
) -> Record:
    """A :class:`Record` from the values of :data:`FIELDS` (``HMGET`` order).

    ``values`` come from ``HMGET`` (``None`` for a missing field) or from a script's
    JSON reply (``False`` for a missing field, the result passed apart). Raises
    ``ValueError`` saying what is wrong when the values are not a record (edited by
    hand, say); the store turns that into :class:`~django_onceonly.DamagedRecord`.
    """
    raw = dict(zip(FIELDS, values, strict=True))
    if raw["result"]:
        result = raw["result"]  # type: ignore[assignment]
    # This runs on every duplicate check: settings are read once, not per field.
    aware = settings.USE_TZ

    def when(name: str) -> dt.datetime | None:
        value = raw[name]
        if not value:
            return None
        moment = _EPOCH + dt.timedelta(microseconds=int(value))
        return moment if aware else moment.replace(tzinfo=None)

    try:
        status = _text(raw["status"])
        if status not in STATUSES:
            raise ValueError(f"status {status[:40]!r} is not a status" if status else "no status")
        owner_token = _text(raw["owner_token"])
        if not owner_token:
            raise ValueError("no owner_token")
        metadata_text = raw["metadata"]
        metadata = (
            json.loads(metadata_text)  # type: ignore[arg-type]
            if metadata_text and metadata_text not in (b"{}", "{}")
            else {}
        )
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not a JSON object")
        return Record(
            scope=_text(raw["scope"]),
            key=_text(raw["key"]),
            status=status,
            owner_token=owner_token,
            fingerprint=_text(raw["fingerprint"]),
            result=None if result is None else json.loads(result),
            error=_text(raw["error"]),
            task_name=_text(raw["task_name"]),
            task_id=_text(raw["task_id"]),
            metadata=metadata,
            created_at=when("created_at"),
            updated_at=when("updated_at"),
            completed_at=when("completed_at"),
            lease_expires_at=when("lease_expires_at"),
            expires_at=when("expires_at"),
            duplicates_blocked=int(raw["duplicates_blocked"] or 0),
            last_duplicate_at=when("last_duplicate_at"),
        )
    except (ValueError, TypeError, OverflowError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors too.
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


# -- the scripts -------------------------------------------------------------------------
# KEYS[1] is the record; KEYS[2] and KEYS[3] (the shard's dirty hash and its counter)
# are passed only when the audit trail is on. ARGV[1] is always the record's member name
# in the dirty hash (JSON [scope, key]). Numbers stay strings: Lua's tostring() would
# print microsecond timestamps in exponent notation. Scripts read a record with load()
# and index it by name (F is generated from FIELDS); load() stops the script, before any
# write, when the record is damaged: a Lua error whose text starts with DAMAGED_REPLY.


def _lua_list(names: Sequence[str]) -> str:
    return "{" + ", ".join(f"'{name}'" for name in names) + "}"


def _lua_set(names: Sequence[str]) -> str:
    return "{" + ", ".join(f"{name} = true" for name in names) + "}"


def _lua_index(names: Sequence[str]) -> str:
    return "{" + ", ".join(f"{name} = {n}" for n, name in enumerate(names, 1)) + "}"


_COMMON = (
    """
local rec = KEYS[1]
-- The record's hash fields, and the position of each in a load(): v[F.status] and so on.
local FIELDS = @FIELDS@
local F = @INDEX@
local STATUSES = @STATUSES@
-- Fields the scripts compare or increment as numbers before they write.
local NUMBERS = {F.expires_at, F.lease_expires_at, F.duplicates_blocked}
local function mark(kind)
  if #KEYS >= 3 then
    local seq = redis.call('INCR', KEYS[3])
    redis.call('HSET', KEYS[2], ARGV[1], kind .. seq)
  end
end
local function damaged(detail)
  error({err = '@DAMAGED@' .. detail})
end
-- The record's fields in FIELDS order (false for a missing one), or nil when there is
-- none. Stops the script, before anything is written, when the key holds something the
-- scripts cannot work on; Python checks the rest when it reads the reply. The common
-- cases cost one HMGET.
local function load()
  local v = redis.pcall('HMGET', rec, unpack(FIELDS))
  if v.err then
    damaged('the key holds a Redis ' .. redis.call('TYPE', rec)['ok'] .. ', not a hash')
  end
  local status = v[F.status]
  if not status then
    if redis.call('EXISTS', rec) == 0 then return nil end
    damaged('no status field')
  end
  if not STATUSES[status] then damaged('status is not a status') end
  if not v[F.owner_token] or v[F.owner_token] == '' then damaged('no owner_token field') end
  for _, i in ipairs(NUMBERS) do
    if v[i] and not string.match(v[i], '^%-?%d+$') then
      damaged(FIELDS[i] .. ' is not an integer')
    end
  end
  return v
end
-- {outcome, JSON array of the fields in FIELDS order (false for a missing one, the
-- result left out), result or false}: one bulk string parses much faster than many.
local function reply(outcome, v)
  local result = v[F.result]
  v[F.result] = false
  return {outcome, cjson.encode(v), result}
end
""".replace("@FIELDS@", _lua_list(FIELDS))
    .replace("@INDEX@", _lua_index(FIELDS))
    .replace("@STATUSES@", _lua_set(STATUSES))
    .replace("@DAMAGED@", DAMAGED_REPLY)
)

# ARGV: member, now, token, lease_expires_at, after_lease, fingerprint, metadata,
# task_name, task_id, scope, key, utc offset text for the hold message, resume_token.
# Reply: {outcome} for a new record, else reply(outcome, the record as it is now).
_CLAIM = """
local now = tonumber(ARGV[2])
local token = ARGV[3]
local v = load()
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
v[F.duplicates_blocked] = tostring(redis.call('HINCRBY', rec, 'duplicates_blocked', 1))
v[F.last_duplicate_at] = ARGV[2]
redis.call('HSET', rec, 'last_duplicate_at', ARGV[2])
return answer('duplicate')
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
local v = load()
if not v or v[F.owner_token] ~= ARGV[2] then return 0 end
local status = v[F.status]
if status ~= 'in_progress' and status ~= 'unknown' then
  -- the same outcome again from its owner is a retried command whose reply was lost
  local stored = v[F.result]
  local same_result = (ARGV[5] == '1' and stored == ARGV[4]) or (ARGV[5] == '0' and not stored)
  if status == ARGV[3] and same_result and v[F.error] == ARGV[6] then return 1 end
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
local v = load()
if not v or v[F.owner_token] ~= ARGV[2] then return 0 end
if v[F.status] ~= 'in_progress' and v[F.status] ~= 'unknown' then return 0 end
redis.call('DEL', rec)
mark('d')
return 1
"""

# ARGV: member, token, lease_expires_at, now
_EXTEND = """
local v = load()
if not v or v[F.owner_token] ~= ARGV[2] or v[F.status] ~= 'in_progress' then return 0 end
redis.call('HSET', rec, 'lease_expires_at', ARGV[3], 'updated_at', ARGV[4])
mark('w')
return 1
"""

# ARGV: member, owner_token, status, allow_live ('1' or '0'), now
_RELEASE_IF_UNCHANGED = """
local v = load()
if not v or v[F.status] ~= ARGV[3] or v[F.owner_token] ~= ARGV[2] then return 0 end
local lease = v[F.lease_expires_at]
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
        self.source = _COMMON + body if common else body
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
GET = Script(_GET)
FINISH = Script(_FINISH)
RELEASE = Script(_RELEASE)
EXTEND = Script(_EXTEND)
FORCE_RELEASE = Script(_FORCE_RELEASE)
RELEASE_IF_UNCHANGED = Script(_RELEASE_IF_UNCHANGED)


@dataclass(frozen=True, slots=True)
class RecordKeys:
    """The Redis keys of one record, all in one Cluster hash slot."""

    record: str
    dirty: str
    seq: str
    member: str  # the record's field name in the dirty hash: JSON [scope, key]
    shard: str


_MEMBER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def member_name(scope: str, key: str) -> str:
    return _MEMBER.encode([scope, key])


def _unavailable(alias: str, exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(
        f"Redis (cache {alias!r}) is unavailable: {exc}. Nothing is known to be written."
    )


class RedisStore(BaseStore):
    """Records in Redis, on the django-redis cache named by ``ONCEONLY_REDIS_CACHE``.

    ``transactional=True`` is refused (Redis cannot join a database transaction).
    ``audit`` (default true) marks every change for
    :func:`~django_onceonly.stores.audit.sync_audit`, which copies records to the
    ``IdempotencyRecord`` table for the admin; a subclass may turn it off.
    """

    audit: bool = True

    def __init__(self, cache_alias: str | None = None) -> None:
        self._alias = cache_alias
        self._guard = threading.Lock()
        self._conn: Redis | None = None
        self._prefix: tuple[str, str] | None = None  # made key of a shard, split at the shard

    @property
    def alias(self) -> str:
        return self._alias or conf.ONCEONLY_REDIS_CACHE

    # -- connection and keys ---------------------------------------------------------

    @property
    def connection(self) -> Redis:
        """The raw redis-py client of the cache (thread-safe, reconnects after a fork)."""
        conn = self._conn
        if conn is None:
            with self._guard:
                if self._conn is None:
                    try:
                        self._conn = get_redis_connection(self.alias)
                    except NotImplementedError as exc:
                        raise ImproperlyConfigured(
                            f"RedisStore needs a django-redis cache: CACHES[{self.alias!r}] "
                            "must use django_redis.cache.RedisCache (ONCEONLY_REDIS_CACHE)"
                        ) from exc
                conn = self._conn
        return conn

    def make_key(self, name: str) -> str:
        """``name`` as the cache stores it (with its ``KEY_PREFIX`` and ``VERSION``)."""
        return str(caches[self.alias].make_key(name))

    def keys(self, scope: str, key: str) -> RecordKeys:
        member = member_name(scope, key)
        digest = hashlib.sha256(member.encode()).hexdigest()
        shard = digest[:2]
        base = self._shard_base(shard)
        return RecordKeys(
            record=f"{base}:r:{digest[2:]}",
            dirty=f"{base}:dirty",
            seq=f"{base}:seq",
            member=member,
            shard=shard,
        )

    def shard_keys(self, shard: str) -> tuple[str, str]:
        """The dirty hash and counter of ``shard`` (two hex digits)."""
        base = self._shard_base(shard)
        return f"{base}:dirty", f"{base}:seq"

    def _shard_base(self, shard: str) -> str:
        prefix = self._prefix
        if prefix is None:
            prefix = self._prefix = self._layout()
        return f"{prefix[0]}{shard}{prefix[1]}"

    def _layout(self) -> tuple[str, str]:
        """Split the made key of a shard around the shard, checking it keeps one slot.

        Made once: a cache's key function, prefix and version do not change while the
        store lives (the store is rebuilt when ``CACHES`` changes).
        """
        marker = "\x00shard\x00"
        made = self.make_key("{onceonly:" + marker + "}")
        if made.count(marker) != 1:
            raise ImproperlyConfigured(
                f"CACHES[{self.alias!r}] KEY_FUNCTION must keep the key readable "
                "(RedisStore needs a {...} hash tag in it)"
            )
        before, after = made.split(marker)
        for shard in ("00", "ff"):
            base = f"{before}{shard}{after}"
            slots = {
                key_slot(f"{base}{suffix}".encode()) for suffix in (":r:ab", ":r:cd", ":dirty")
            }
            if len(slots) != 1:
                raise ImproperlyConfigured(
                    f"CACHES[{self.alias!r}] KEY_PREFIX or KEY_FUNCTION breaks RedisStore's "
                    "hash tag: the keys of one record would land in different Redis Cluster "
                    "slots (an empty '{}' in the prefix does that)"
                )
        return before, after

    def _script_keys(self, keys: RecordKeys) -> list[str]:
        return [keys.record, keys.dirty, keys.seq] if self.audit else [keys.record]

    def _run(self, script: Script, scope: str, key: str, args: Sequence[str | int]) -> Any:
        keys = self.keys(scope, key)
        return self._call(script, scope, key, self._script_keys(keys), [keys.member, *args])

    def _call(
        self,
        script: Script,
        scope: str,
        key: str,
        script_keys: Sequence[str],
        args: Sequence[str | int],
    ) -> Any:
        try:
            return script(self.connection, script_keys, args)
        except UNAVAILABLE_ERRORS as exc:
            raise _unavailable(self.alias, exc) from exc
        except ResponseError as exc:
            text = str(exc)
            if text.startswith(UNAVAILABLE_REPLIES):
                raise _unavailable(self.alias, exc) from exc
            if text.startswith(DAMAGED_REPLY):
                # Redis may append where in the script the error was raised.
                detail = text[len(DAMAGED_REPLY) :].split(" script:", 1)[0]
                raise self._damaged(scope, key, self.keys(scope, key), detail) from exc
            raise

    def _damaged(self, scope: str, key: str, keys: RecordKeys, detail: str) -> DamagedRecord:
        return DamagedRecord(key, f"Redis key {keys.record!r}: {detail}", scope)

    def _record(self, scope: str, key: str, reply: Sequence[Any]) -> Record:
        """The record of a script's ``reply(...)``: ``{outcome, fields JSON, result}``."""
        try:
            return record_from_values(json.loads(reply[1]), reply[2] or None)
        except ValueError as exc:
            raise self._damaged(scope, key, self.keys(scope, key), str(exc)) from exc

    # -- the primitives --------------------------------------------------------------

    def claim_call(self, request: ClaimRequest) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of the claim script (``CLAIM``) for ``request``."""
        keys = self.keys(request.scope, request.key)
        aware = request.now.tzinfo is not None
        args: list[str | int] = [
            keys.member,
            to_micros(request.now),
            request.token,
            to_micros(request.lease_expires_at),
            request.after_lease,
            request.fingerprint,
            request.metadata_json,
            request.task_name,
            request.task_id,
            request.scope,
            request.key,
            "+0000" if aware else "",
            request.resume_token,
        ]
        return self._script_keys(keys), args

    def _claim(self, request: ClaimRequest) -> ClaimResult:
        script_keys, args = self.claim_call(request)
        reply = self._call(CLAIM, request.scope, request.key, script_keys, args)
        outcome = _text(reply[0])
        if outcome == "acquired":
            record = Record(
                scope=request.scope,
                key=request.key,
                status=Status.IN_PROGRESS.value,
                owner_token=request.token,
                fingerprint=request.fingerprint,
                task_name=request.task_name,
                task_id=request.task_id,
                metadata=request.metadata,
                created_at=request.now,
                updated_at=request.now,
                lease_expires_at=request.lease_expires_at,
            )
            return ClaimResult(acquired=True, record=record)
        record = self._record(request.scope, request.key, reply)
        if outcome in ("resumed", "reclaimed"):
            return ClaimResult(acquired=True, record=record, lease_expired=outcome == "reclaimed")
        return ClaimResult(acquired=False, record=record, lease_expired=outcome == "held")

    def _finish(
        self,
        scope: str,
        key: str,
        token: str,
        *,
        status: str,
        result_json: str | None,
        error: str,
        now: dt.datetime,
        expires_at: dt.datetime | None,
        transactional: bool,
    ) -> bool:
        keep_ms = ""
        if expires_at is not None:
            remaining = (to_micros(expires_at) - to_micros(now)) / 1000
            grace = AUDIT_GRACE_MS if self.audit else 0
            keep_ms = str(max(1, math.ceil(remaining)) + grace)
        done = self._run(
            FINISH,
            scope,
            key,
            [
                token,
                status,
                result_json or "",
                "0" if result_json is None else "1",
                error,
                to_micros(now),
                "" if expires_at is None else to_micros(expires_at),
                keep_ms,
            ],
        )
        return int(done) == 1

    def _release(self, scope: str, key: str, token: str, *, transactional: bool) -> bool:
        return int(self._run(RELEASE, scope, key, [token])) == 1

    def _extend(
        self,
        scope: str,
        key: str,
        token: str,
        *,
        lease_expires_at: dt.datetime,
        now: dt.datetime,
        transactional: bool,
    ) -> bool:
        args: list[str | int] = [token, to_micros(lease_expires_at), to_micros(now)]
        return int(self._run(EXTEND, scope, key, args)) == 1

    def _release_if_unchanged(
        self,
        scope: str,
        key: str,
        *,
        owner_token: str,
        status: str,
        allow_live: bool,
        now: dt.datetime,
    ) -> bool:
        args = [owner_token, status, "1" if allow_live else "0", to_micros(now)]
        return int(self._run(RELEASE_IF_UNCHANGED, scope, key, args)) == 1

    # -- reads and the operator's release ----------------------------------------------

    def get(self, scope: str, key: str) -> Record | None:
        reply = self._run(GET, scope, key, [])
        if not reply:
            return None
        return self._record(scope, key, reply)

    def force_release(self, scope: str, key: str) -> bool:
        return bool(self._run(FORCE_RELEASE, scope, key, []))
