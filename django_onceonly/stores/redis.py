"""``RedisStore``: records in Redis through django-redis, one server-side script per step.

Every operation is one ``EVALSHA`` of a Lua script (``redis_scripts.py``), so it is
atomic and costs one round trip: claim (which, on a duplicate, only reads and returns the
stored record; the count is buffered and added later by ``ADD_DUPLICATES``, see
:mod:`~django_onceonly.stores.duplicates`), get, finish, release, extend, release-if-unchanged and
force-release. Taking over an expired record or a
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
import logging
import math
import re
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
from redis.exceptions import (
    ClusterError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..conf import conf
from ..exceptions import DamagedRecord, StoreUnavailable
from ..rules import Status
from .base import (
    STATUSES,
    TIME_FIELDS,
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Record,
    TakenKeys,
)
from .duplicates import DuplicateCount
from .redis_scripts import (
    ADD_DUPLICATES,
    CLAIM,
    DAMAGED_REPLY,
    EXTEND,
    FIELDS,
    FINISH,
    FORCE_RELEASE,
    GET,
    NUMBERS,
    RELEASE,
    RELEASE_IF_UNCHANGED,
    Script,
)

logger = logging.getLogger("django_onceonly")

SHARDS = 256
# Redis answers these when it is up but cannot take the write; nothing was written.
# (redis-py turns OOM, READONLY, TRYAGAIN and LOADING into exception classes of their own;
# on Redis Cluster, CLUSTERDOWN and MASTERDOWN into ClusterDownError, too many MOVED
# redirections into ClusterError, and no reachable node or no master for a slot into
# RedisClusterException, which is not a RedisError.)
UNAVAILABLE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    TryAgainError,
    ClusterError,
    RedisClusterException,
)
UNAVAILABLE_REPLIES = ("MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS", "MISCONF")
# Finished records outlive their expiry in Redis by this much while the audit trail is
# on, so that a lagging sync still copies their final state before Redis drops them.
# Claims treat them as absent from expires_at exactly.
AUDIT_GRACE_MS = 300_000

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# How many records' keys a store remembers (see RedisStore.keys): under 1 KB each.
KEYS_KEPT = 1024


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


# Positions in FIELDS order, resolved once: record_from_values runs on every duplicate check.
_AT = {name: FIELDS.index(name) for name in FIELDS}
_STATUS, _OWNER, _RESULT, _METADATA, _DUPLICATES = (
    _AT[name] for name in ("status", "owner_token", "result", "metadata", "duplicates_blocked")
)
_TIMES = tuple(_AT[name] for name in FIELDS if name in TIME_FIELDS)
_TEXTS = tuple(
    _AT[name]
    for name in FIELDS
    if name not in TIME_FIELDS and name not in ("result", "metadata", "duplicates_blocked")
)
# The fields the scripts refuse a record for when they are not integers (as their Lua
# pattern '^%-?%d+$' does; Python's int() would take " 1" or "1_0").
_NUMBERS = tuple(_AT[name] for name in NUMBERS)
_INTEGER = re.compile(rb"-?[0-9]+")
_INTEGER_TEXT = re.compile(r"-?[0-9]+")  # a client made with decode_responses=True
_EMPTY_JSON = (b"{}", "{}")


def record_from_values(
    values: Sequence[bytes | str | bool | None],
    result: bytes | str | None = None,
    *,
    aware: bool | None = None,
) -> Record:
    """A :class:`Record` from the values of :data:`FIELDS` (``HMGET`` order).

    ``values`` come from ``HMGET`` (``None`` for a missing field) or from a script's
    JSON reply (``False`` for a missing field, the result passed apart). ``aware``:
    whether times come back aware (``settings.USE_TZ`` when not given). Raises
    ``ValueError`` saying what is wrong when the values are not a record (edited by
    hand, say); the store turns that into :class:`~django_onceonly.DamagedRecord`.
    """
    if len(values) != len(FIELDS):
        raise ValueError(f"{len(values)} values for {len(FIELDS)} fields")
    if aware is None:
        aware = bool(settings.USE_TZ)
    # Built in place, in FIELDS order, which is Record's own order: one positional call.
    out: list[Any] = list(values)
    try:
        for i in _TEXTS:
            value = out[i]
            if value.__class__ is bytes:
                out[i] = value.decode()
            elif value is None or value is False or value is True:
                out[i] = ""
        status = out[_STATUS]
        if status not in STATUSES:
            raise ValueError(f"status {status[:40]!r} is not a status" if status else "no status")
        if not out[_OWNER]:
            raise ValueError("no owner_token")
        metadata_text = out[_METADATA]
        metadata = (
            json.loads(metadata_text) if metadata_text and metadata_text not in _EMPTY_JSON else {}
        )
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not a JSON object")
        out[_METADATA] = metadata
        for i in _TIMES:
            value = out[i]
            if value:
                moment = _EPOCH + dt.timedelta(0, 0, int(value))
                out[i] = moment if aware else moment.replace(tzinfo=None)
            else:
                out[i] = None
        stored = out[_RESULT] or result
        if stored.__class__ is bytes:  # json.loads would first guess its encoding
            stored = stored.decode()
        out[_RESULT] = None if stored is None else json.loads(stored)
        out[_DUPLICATES] = int(out[_DUPLICATES] or 0)
        return Record(*out)
    except (ValueError, TypeError, OverflowError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors too.
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


@dataclass(slots=True)  # not frozen: built on every claim of a new key (see Record)
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
        # The keys of the records named recently, by (scope, key): complete() after
        # check_lock() names the same record, and duplicates come in storms on the same
        # keys; each saves a digest (about 2 µs). Threads only add to it, and it is
        # emptied whole when full.
        self._known_keys: dict[tuple[str, str], RecordKeys] = {}
        self._taken = TakenKeys()

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
        name = (scope, key)
        known = self._known_keys.get(name)
        if known is not None:
            return known
        member = member_name(scope, key)
        digest = hashlib.sha256(member.encode()).hexdigest()
        shard = digest[:2]
        base = self._shard_base(shard)
        keys = RecordKeys(
            record=f"{base}:r:{digest[2:]}",
            dirty=f"{base}:dirty",
            seq=f"{base}:seq",
            member=member,
            shard=shard,
        )
        if len(self._known_keys) >= KEYS_KEPT:
            self._known_keys.clear()
        self._known_keys[name] = keys
        return keys

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
        # A key this process has seen taken is read first, with one plain HMGET: when it
        # holds a live record of someone else's, that is the answer, the same the claim
        # script would give (on a duplicate it only reads), for a fraction of a script's
        # cost on the server and none of its arguments. Anything else (no record, an
        # expired one, a stale lease, the caller's own claim, a record the read cannot
        # vouch for) goes to the script, which decides atomically.
        name = (request.scope, request.key)
        if name in self._taken and not request.resume_token:
            record = self._live_record(request)
            if record is not None:
                return ClaimResult(acquired=False, record=record)
        script_keys, args = self.claim_call(request)
        reply = self._call(CLAIM, request.scope, request.key, script_keys, args)
        if name not in self._taken:
            self._taken.add(name)
        return self._claim_result(request, reply)

    def _live_record(self, request: ClaimRequest) -> Record | None:
        """The record under the request's key if it blocks the claim as it stands, else None.

        ``None`` also for anything the scripts would look at twice: a key of another
        type, a damaged field. One command, so what it read is one moment's record.
        """
        keys = self.keys(request.scope, request.key)
        try:
            values = self.connection.hmget(keys.record, FIELDS)
        except UNAVAILABLE_ERRORS as exc:
            raise _unavailable(self.alias, exc) from exc
        except ResponseError as exc:
            if str(exc).startswith(UNAVAILABLE_REPLIES):
                raise _unavailable(self.alias, exc) from exc
            return None  # WRONGTYPE: the claim script says what is wrong
        if values[_STATUS] is None:
            return None
        for i in _NUMBERS:
            number = values[i]
            if number is not None and not (
                _INTEGER.fullmatch(number)
                if isinstance(number, bytes)
                else _INTEGER_TEXT.fullmatch(number)
            ):
                return None
        now = request.now
        try:
            record = record_from_values(values, aware=now.tzinfo is not None)
        except ValueError:
            return None
        if (
            record.owner_token == request.token
            or record.is_expired(now)
            or record.lease_is_stale(now)
        ):
            return None
        return record

    def _claim_many(self, requests: list[ClaimRequest]) -> list[ClaimResult]:
        """Every claim script in one pipeline: one round trip, each claim atomic on its own.

        One script per key rather than one script for the batch: a record's keys share a
        hash slot, but a batch's records do not, so this also works on Redis Cluster.
        """
        if len(requests) < 2:  # a pipeline of one costs more than the call itself
            return [self._claim(request) for request in requests]
        calls = [self.claim_call(request) for request in requests]
        replies = self._pipeline(CLAIM, calls)
        results: list[ClaimResult] = []
        try:
            for request, (script_keys, args), reply in zip(requests, calls, replies, strict=True):
                if isinstance(reply, Exception):
                    # Raised as a single call would raise it (NOSCRIPT: nothing ran, so
                    # the call loads the script and runs it).
                    reply = self._call(CLAIM, request.scope, request.key, script_keys, args)
                results.append(self._claim_result(request, reply))
        except BaseException:
            # The pipeline ran the calls after the one that failed too (on Redis Cluster
            # another master may have answered them): give their claims back as well.
            done = len(results) + 1
            later = [
                (request, reply)
                for request, reply in zip(requests[done:], replies[done:], strict=True)
                if not isinstance(reply, Exception) and _text(reply[0]) == "acquired"
            ]
            self._release_acquired(
                [*requests[: len(results)], *(request for request, _ in later)],
                [*results, *(self._claim_result(request, reply) for request, reply in later)],
            )
            raise
        return results

    def _pipeline(
        self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[str | int]]]
    ) -> list[Any]:
        """``script`` once per call, in one pipeline; the replies, errors among them.

        No SCRIPT EXISTS round trip first: a NOSCRIPT reply means that call did not run
        (the caller reruns it as a single call, which loads the script).
        """
        try:
            pipe = self.connection.pipeline(transaction=False)
            for script_keys, args in calls:
                pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
            return list(pipe.execute(raise_on_error=False))
        except UNAVAILABLE_ERRORS as exc:
            raise _unavailable(self.alias, exc) from exc

    def _claim_result(self, request: ClaimRequest, reply: Any) -> ClaimResult:
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

    def finish_call(
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
    ) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of the finish script (``FINISH``) for one outcome."""
        now_us = to_micros(now)
        expires_us: int | str = ""
        keep_ms = ""
        if expires_at is not None:
            expires_us = to_micros(expires_at)
            grace = AUDIT_GRACE_MS if self.audit else 0
            keep_ms = str(max(1, math.ceil((expires_us - now_us) / 1000)) + grace)
        keys = self.keys(scope, key)
        args: list[str | int] = [
            keys.member,
            token,
            status,
            result_json or "",
            "0" if result_json is None else "1",
            error,
            now_us,
            expires_us,
            keep_ms,
        ]
        return self._script_keys(keys), args

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
        script_keys, args = self.finish_call(
            scope,
            key,
            token,
            status=status,
            result_json=result_json,
            error=error,
            now=now,
            expires_at=expires_at,
        )
        return int(self._call(FINISH, scope, key, script_keys, args)) == 1

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

    def _add_duplicates(self, counts: Sequence[DuplicateCount]) -> list[DuplicateCount]:
        """One pipeline of ``ADD_DUPLICATES`` calls, one per record (each in its slot)."""
        counts = [count for count in counts if count.created_at is not None]
        calls: list[tuple[list[str], list[str | int]]] = []
        for count in counts:
            assert count.created_at is not None
            keys = self.keys(count.scope, count.key)
            args: list[str | int] = [
                keys.member,
                to_micros(count.created_at),
                count.count,
                to_micros(count.last_at),
            ]
            calls.append((self._script_keys(keys), args))
        replies = self._pipeline(ADD_DUPLICATES, calls)
        left: list[DuplicateCount] = []
        for count, (script_keys, args), reply in zip(counts, calls, replies, strict=True):
            try:
                if isinstance(reply, NoScriptError):  # nothing ran: load it and run it
                    ADD_DUPLICATES(self.connection, script_keys, args)
                elif isinstance(reply, Exception):
                    raise reply
            except UNAVAILABLE_ERRORS:
                left.append(count)  # OOM, READONLY...: nothing written, kept for later
            except ResponseError as exc:
                if str(exc).startswith(UNAVAILABLE_REPLIES):
                    left.append(count)
                else:  # the others were written: this one is dropped, not the batch
                    logger.warning("django-onceonly dropped a duplicate count: %s", exc)
        return left

    # -- reads and the operator's release ----------------------------------------------

    def get(self, scope: str, key: str) -> Record | None:
        reply = self._run(GET, scope, key, [])
        if not reply:
            return None
        return self._record(scope, key, reply)

    def force_release(self, scope: str, key: str) -> bool:
        return bool(self._run(FORCE_RELEASE, scope, key, []))
