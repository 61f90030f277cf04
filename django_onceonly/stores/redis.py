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
from ..exceptions import LockLost, StoreUnavailable
from .base import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    RECORD_FIELDS,
    UNKNOWN,
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Record,
)

SHARDS = 256
# The hash fields of a record, in the order scripts return them.
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
# Finished records outlive their expiry in Redis by this much while the audit trail is
# on, so that a lagging sync still copies their final state before Redis drops them.
# Claims treat them as absent from expires_at exactly.
AUDIT_GRACE_MS = 300_000

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_UTC = dt.UTC


def to_micros(value: dt.datetime) -> int:
    """Microseconds since the epoch; a naive datetime is read as UTC (see ``from_micros``)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(raw: bytes | str | bool | None) -> dt.datetime | None:
    """The datetime stored by ``to_micros``: aware UTC with ``USE_TZ``, naive otherwise.

    Naive datetimes go in and come out unchanged, so comparisons between them hold;
    only differences of times ever reach Redis's own clock.
    """
    if raw is None or raw is False:
        return None
    value = _EPOCH + dt.timedelta(microseconds=int(raw))
    return value if settings.USE_TZ else value.replace(tzinfo=None)


def _text(raw: bytes | str | bool | None) -> str:
    if raw is None or raw is False or raw is True:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw


def record_from_values(
    values: Sequence[bytes | str | bool | None], result: bytes | str | None = None
) -> Record:
    """A :class:`Record` from the values of :data:`FIELDS` in order.

    ``values`` come from ``HMGET`` (``None`` for a missing field) or from a claim
    script's JSON reply (``False`` for a missing field, the result passed apart).
    """
    (
        scope,
        key,
        status,
        owner_token,
        fingerprint,
        stored_result,
        error,
        task_name,
        task_id,
        metadata,
        created_at,
        updated_at,
        completed_at,
        lease_expires_at,
        expires_at,
        duplicates_blocked,
        last_duplicate_at,
    ) = values
    if stored_result:
        result = stored_result  # type: ignore[assignment]
    # This runs on every duplicate check: settings are read once, not per field.
    aware = settings.USE_TZ

    def when(raw: bytes | str | bool | None) -> dt.datetime | None:
        if not raw:
            return None
        value = _EPOCH + dt.timedelta(microseconds=int(raw))
        return value if aware else value.replace(tzinfo=None)

    return Record(
        scope=_text(scope),
        key=_text(key),
        status=_text(status),
        owner_token=_text(owner_token),
        fingerprint=_text(fingerprint),
        result=None if result is None else json.loads(result),
        error=_text(error),
        task_name=_text(task_name),
        task_id=_text(task_id),
        metadata=json.loads(metadata) if metadata and metadata not in (b"{}", "{}") else {},  # type: ignore[arg-type]
        created_at=when(created_at),
        updated_at=when(updated_at),
        completed_at=when(completed_at),
        lease_expires_at=when(lease_expires_at),
        expires_at=when(expires_at),
        duplicates_blocked=int(duplicates_blocked or 0),
        last_duplicate_at=when(last_duplicate_at),
    )


# -- the scripts -------------------------------------------------------------------------
# KEYS[1] is the record; KEYS[2] and KEYS[3] (the shard's dirty hash and its counter)
# are passed only when the audit trail is on. ARGV[1] is always the record's member name
# in the dirty hash (JSON [scope, key]). Numbers stay strings: Lua's tostring() would
# print microsecond timestamps in exponent notation.

_COMMON = """
local rec = KEYS[1]
local FIELDS = {FIELD_NAMES}
local function mark(kind)
  if #KEYS >= 3 then
    local seq = redis.call('INCR', KEYS[3])
    redis.call('HSET', KEYS[2], ARGV[1], kind .. seq)
  end
end
""".replace("FIELD_NAMES", ", ".join(f"'{name}'" for name in FIELDS))

# ARGV: member, now, token, lease_expires_at, after_lease, fingerprint, metadata,
# task_name, task_id, scope, key, utc offset text for the hold message, resume_token.
# Reply: {outcome} for a new record, else {outcome, JSON array of the record's fields as
# they are now (false for a missing one, the result left out), result or false}: one
# bulk string parses much faster than seventeen.
_CLAIM = """
local now = tonumber(ARGV[2])
local token = ARGV[3]
-- 1 scope 2 key 3 status 4 owner_token 5 fingerprint 6 result 7 error 8 task_name
-- 9 task_id 10 metadata 11 created_at 12 updated_at 13 completed_at 14 lease_expires_at
-- 15 expires_at 16 duplicates_blocked 17 last_duplicate_at
local v = redis.call('HMGET', rec, unpack(FIELDS))
local function create()
  redis.call('HSET', rec, 'scope', ARGV[10], 'key', ARGV[11], 'status', 'in_progress',
    'owner_token', token, 'fingerprint', ARGV[6], 'error', '', 'task_name', ARGV[8],
    'task_id', ARGV[9], 'metadata', ARGV[7], 'created_at', ARGV[2], 'updated_at', ARGV[2],
    'lease_expires_at', ARGV[4], 'duplicates_blocked', '0')
  mark('w')
  return {'acquired'}
end
local function reply(outcome)
  mark('w')
  local result = v[6]
  v[6] = false
  return {outcome, cjson.encode(v), result}
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

local status = v[3]
if not status then
  return create()
end
if v[15] and tonumber(v[15]) <= now then
  -- past its expiry: absent, whoever owned it
  redis.call('DEL', rec)
  return create()
end
if status == 'in_progress' and (v[4] == token or (ARGV[13] ~= '' and v[4] == ARGV[13])) then
  -- the owner's own earlier claim (a Celery retry hands it over to its new token), or
  -- this very claim again (redis-py resent a command whose reply was lost): stale or not
  redis.call('HSET', rec, 'owner_token', token, 'lease_expires_at', ARGV[4],
    'updated_at', ARGV[2])
  v[4] = token
  v[14] = ARGV[4]
  v[12] = ARGV[2]
  return reply('resumed')
end
if status == 'in_progress' and v[14] and tonumber(v[14]) <= now then
  if ARGV[5] == 'hold' then
    v[3] = 'unknown'
    v[7] = 'lease ended at ' .. utc(v[14]) .. ARGV[12] .. ' without an outcome;'
      .. ' the owner may have crashed after acting. Release it to run again.'
    v[12] = ARGV[2]
    v[17] = ARGV[2]
    redis.call('HSET', rec, 'status', v[3], 'error', v[7], 'updated_at', ARGV[2],
      'last_duplicate_at', ARGV[2])
    v[16] = tostring(redis.call('HINCRBY', rec, 'duplicates_blocked', 1))
    return reply('held')
  end
  local seen = v[5] or ''
  if ARGV[6] == '' or seen == '' or seen == ARGV[6] then
    redis.call('HSET', rec, 'owner_token', token, 'fingerprint', ARGV[6],
      'task_name', ARGV[8], 'task_id', ARGV[9], 'metadata', ARGV[7],
      'updated_at', ARGV[2], 'lease_expires_at', ARGV[4])
    v[4] = token
    v[5] = ARGV[6]
    v[8] = ARGV[8]
    v[9] = ARGV[9]
    v[10] = ARGV[7]
    v[12] = ARGV[2]
    v[14] = ARGV[4]
    return reply('reclaimed')
  end
end
v[16] = tostring(redis.call('HINCRBY', rec, 'duplicates_blocked', 1))
v[17] = ARGV[2]
redis.call('HSET', rec, 'last_duplicate_at', ARGV[2])
return reply('duplicate')
"""

# ARGV: member, token, status, result ('' when has_result is '0'), has_result, error,
# now, expires_at ('' for never), milliseconds until Redis may drop it.
_FINISH = """
local cur = redis.call('HMGET', rec, 'status', 'owner_token', 'result', 'error')
if cur[2] ~= ARGV[2] then return 0 end
if cur[1] ~= 'in_progress' and cur[1] ~= 'unknown' then
  -- the same outcome again from its owner is a retried command whose reply was lost
  local same_result = (ARGV[5] == '1' and cur[3] == ARGV[4]) or (ARGV[5] == '0' and not cur[3])
  if cur[1] == ARGV[3] and same_result and cur[4] == ARGV[6] then return 1 end
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
local cur = redis.call('HMGET', rec, 'status', 'owner_token')
if cur[2] ~= ARGV[2] or (cur[1] ~= 'in_progress' and cur[1] ~= 'unknown') then return 0 end
redis.call('DEL', rec)
mark('d')
return 1
"""

# ARGV: member, token, lease_expires_at, now
_EXTEND = """
local cur = redis.call('HMGET', rec, 'status', 'owner_token')
if cur[2] ~= ARGV[2] or cur[1] ~= 'in_progress' then return 0 end
redis.call('HSET', rec, 'lease_expires_at', ARGV[3], 'updated_at', ARGV[4])
mark('w')
return 1
"""

# ARGV: member, owner_token, status, allow_live ('1' or '0'), now
_RELEASE_IF_UNCHANGED = """
local cur = redis.call('HMGET', rec, 'status', 'owner_token', 'lease_expires_at')
if not cur[1] or cur[1] ~= ARGV[3] or cur[2] ~= ARGV[2] then return 0 end
if ARGV[4] ~= '1' and cur[1] == 'in_progress' and cur[3]
    and tonumber(cur[3]) > tonumber(ARGV[5]) then
  return 0
end
redis.call('DEL', rec)
mark('d')
return 1
"""

# ARGV: member
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

    def _run(self, script: Script, keys: RecordKeys, args: Sequence[str | int]) -> Any:
        try:
            return script(self.connection, self._script_keys(keys), [keys.member, *args])
        except UNAVAILABLE_ERRORS as exc:
            raise _unavailable(self.alias, exc) from exc
        except ResponseError as exc:
            if str(exc).startswith(UNAVAILABLE_REPLIES):
                raise _unavailable(self.alias, exc) from exc
            raise

    @staticmethod
    def _refuse_transactional(transactional: bool) -> None:
        if transactional:
            raise ValueError(
                "transactional=True is not possible with RedisStore: Redis cannot take part "
                "in a database transaction. Use DatabaseStore for claims that must commit or "
                "roll back with your transaction."
            )

    # -- the contract ----------------------------------------------------------------

    def claim(self, request: ClaimRequest) -> ClaimResult:
        self._refuse_transactional(request.transactional)
        aware = request.now.tzinfo is not None
        keys = self.keys(request.scope, request.key)
        reply = self._run(
            CLAIM,
            keys,
            [
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
            ],
        )
        outcome = _text(reply[0])
        if outcome == "acquired":
            record = Record(
                scope=request.scope,
                key=request.key,
                status=IN_PROGRESS,
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
        record = record_from_values(json.loads(reply[1]), reply[2])
        if outcome in ("resumed", "reclaimed"):
            return ClaimResult(acquired=True, record=record, lease_expired=outcome == "reclaimed")
        return ClaimResult(acquired=False, record=record, lease_expired=outcome == "held")

    def finish(
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
        transactional: bool = False,
    ) -> None:
        self._refuse_transactional(transactional)
        if status not in (COMPLETED, FAILED, UNKNOWN):
            raise ValueError(f"cannot finish with status {status!r}")
        keep_ms = ""
        if expires_at is not None:
            remaining = (to_micros(expires_at) - to_micros(now)) / 1000
            grace = AUDIT_GRACE_MS if self.audit else 0
            keep_ms = str(max(1, math.ceil(remaining)) + grace)
        done = self._run(
            FINISH,
            self.keys(scope, key),
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
        self._check_owned(done, key, f"finish as {status}")

    @staticmethod
    def _check_owned(done: Any, key: str, what: str) -> None:
        if int(done) != 1:
            raise LockLost(
                f"cannot {what} key {key!r}: this owner no longer holds it "
                "(its lease was taken over, or the key was released or finished)"
            )

    def release(self, scope: str, key: str, token: str, *, transactional: bool = False) -> None:
        self._refuse_transactional(transactional)
        done = self._run(RELEASE, self.keys(scope, key), [token])
        self._check_owned(done, key, "release")

    def extend(
        self,
        scope: str,
        key: str,
        token: str,
        *,
        lease_expires_at: dt.datetime,
        now: dt.datetime,
        transactional: bool = False,
    ) -> None:
        self._refuse_transactional(transactional)
        done = self._run(
            EXTEND, self.keys(scope, key), [token, to_micros(lease_expires_at), to_micros(now)]
        )
        self._check_owned(done, key, "extend")

    def get(self, scope: str, key: str) -> Record | None:
        keys = self.keys(scope, key)
        try:
            values = self.connection.hmget(keys.record, FIELDS)
        except UNAVAILABLE_ERRORS as exc:
            raise _unavailable(self.alias, exc) from exc
        if values[2] is None:
            return None
        return record_from_values(values)

    def force_release(self, scope: str, key: str) -> bool:
        return bool(self._run(FORCE_RELEASE, self.keys(scope, key), []))

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
        done = self._run(
            RELEASE_IF_UNCHANGED,
            self.keys(scope, key),
            [owner_token, status, "1" if allow_live else "0", to_micros(now)],
        )
        return int(done) == 1
