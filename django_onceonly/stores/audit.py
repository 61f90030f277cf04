"""The audit trail of ``RedisStore``: records copied to ``IdempotencyRecord`` in batches.

Write-behind, with the queue kept in Redis itself. Every ``RedisStore`` script marks the
record it changed in its shard's dirty hash, in the same atomic step as the change, so
no change can be lost between Redis and the queue, whatever happens to the process that
made it. :func:`sync_audit` (``manage.py onceonly_sync``) then, per batch:

1. reads the marks (``HSCAN`` of the 256 shard hashes, one pipelined round trip);
2. reads the records they name (``HMGET``, pipelined);
3. writes them to ``ONCEONLY_DATABASE`` in one transaction: an upsert on the unique
   ``(scope, key)`` for records that exist, a delete for records that were released;
4. removes each mark only if it is still the mark it read. A record changed in the
   meantime has a new mark and is copied again by the next pass.

A sync that dies at any point leaves its marks in place: the next one copies those
records again (the writes are idempotent). One sync runs at a time: a lock in Redis
with a lease of :data:`LOCK_MS`, renewed before each batch and checked once more inside
each batch's transaction, just before it commits. A sync that stalled past its lease
(another sync may have copied newer versions meanwhile) rolls its batch back and
stops, so an older copy of a record never overwrites a newer one in the table.

A record that cannot be read (edited by hand in Redis: see ``docs/redis.md``) is not
copied; the sync logs it as an error and goes on with the others.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.db.models import Q

from ..conf import conf
from ..exceptions import StoreUnavailable
from . import duplicates, get_store
from .redis import SHARDS, UNAVAILABLE_ERRORS, RedisStore, record_from_values
from .redis_scripts import FIELDS, Script

if TYPE_CHECKING:
    from ..models import IdempotencyRecord

logger = logging.getLogger("django_onceonly")

# How long the sync lock is trusted after each renewal: a batch takes milliseconds.
LOCK_MS = 60_000

# KEYS[1]: a shard's dirty hash; ARGV: member, mark, member, mark, ...
_UNMARK = Script(
    """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
""",
    common=False,
)
# KEYS[1]: the sync lock; ARGV[1]: this sync's token, ARGV[2]: its new lease in ms
_RENEW = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
""",
    common=False,
)
# KEYS[1]: the sync lock; ARGV[1]: this sync's token
_UNLOCK = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    common=False,
)

COPIED_FIELDS = [name for name in FIELDS if name not in ("scope", "key")]


@dataclass
class SyncReport:
    """What one :func:`sync_audit` call did."""

    copied: int = 0  # rows inserted or updated
    deleted: int = 0  # rows of released records removed
    pending: int = 0  # marks left for the next pass (their record changed meanwhile)
    damaged: int = 0  # records that could not be read, left out (and logged)
    locked_out: bool = False  # another sync was running (or took over): this one stopped


class _LockLost(Exception):
    """This sync's lock lease ended: another sync may be copying newer versions."""


@dataclass(frozen=True, slots=True)
class _SyncLock:
    conn: Any
    key: str
    token: str

    def renew(self) -> None:
        if not int(_RENEW(self.conn, [self.key], [self.token, LOCK_MS])):
            raise _LockLost


@dataclass(frozen=True, slots=True)
class _Mark:
    shard: str
    member: str
    mark: str


def _store(store: RedisStore | None) -> RedisStore:
    chosen = store if store is not None else get_store()
    if not isinstance(chosen, RedisStore):
        raise ImproperlyConfigured(
            "the audit sync copies RedisStore records; ONCEONLY_STORE is "
            f"{type(chosen).__module__}.{type(chosen).__qualname__}, which writes the table itself"
        )
    if not chosen.audit:
        raise ImproperlyConfigured(f"{type(chosen).__qualname__}.audit is off: nothing is marked")
    return chosen


def sync_audit(
    *, batch_size: int = 1000, store: RedisStore | None = None, using: str | None = None
) -> SyncReport:
    """Copy every changed ``RedisStore`` record to ``IdempotencyRecord``; return the counts.

    ``using`` defaults to ``ONCEONLY_DATABASE``. Safe to run from several processes at
    once (only one works at a time) and to interrupt at any point. The duplicate counts
    this process still holds are written first
    (:func:`~django_onceonly.stores.duplicates.flush`); other processes' arrive within
    a second, and the next sync copies them.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    store = _store(store)
    duplicates.flush()
    try:
        return _sync(store, batch_size, using or conf.ONCEONLY_DATABASE)
    except UNAVAILABLE_ERRORS as exc:
        raise StoreUnavailable(
            f"Redis (cache {store.alias!r}) is unavailable: {exc}. The audit sync will copy "
            "the marked records once it is back."
        ) from exc


def _sync(store: RedisStore, batch_size: int, alias: str) -> SyncReport:
    conn = store.connection
    lock = _SyncLock(conn, store.make_key("onceonly:audit-sync-lock"), secrets.token_hex(16))
    report = SyncReport()
    if not conn.set(lock.key, lock.token, nx=True, px=LOCK_MS):
        report.locked_out = True
        return report
    try:
        while True:
            marks, more = _scan(store, batch_size)
            for start in range(0, len(marks), batch_size):
                batch = marks[start : start + batch_size]
                lock.renew()
                _write(store, batch, alias, report, lock)
                _unmark(store, batch, report)
            if not more:
                return report
    except _LockLost:
        logger.warning(
            "django-onceonly: the audit sync held its lock past %s ms and stopped; its last "
            "batch was rolled back and another sync copies those records",
            LOCK_MS,
        )
        report.locked_out = True
        return report
    finally:
        _UNLOCK(conn, [lock.key], [lock.token])


def _scan(store: RedisStore, batch_size: int) -> tuple[list[_Mark], bool]:
    """One page of marks from every shard; ``more`` when a shard has further pages."""
    with store.connection.pipeline(transaction=False) as pipe:
        shards = [f"{n:02x}" for n in range(SHARDS)]
        for shard in shards:
            pipe.hscan(store.shard_keys(shard)[0], 0, count=batch_size)
        pages = pipe.execute()
    marks: list[_Mark] = []
    more = False
    for shard, (cursor, entries) in zip(shards, pages, strict=True):
        more = more or int(cursor) != 0
        marks.extend(
            _Mark(shard, member.decode(), mark.decode()) for member, mark in entries.items()
        )
    return marks, more


def _write(
    store: RedisStore,
    marks: list[_Mark],
    alias: str,
    report: SyncReport,
    lock: _SyncLock | None = None,
) -> None:
    """Copy the records ``marks`` name to the table, in one transaction.

    With ``lock``, the transaction commits only if the lock is still this sync's.
    """
    rows, gone = _read(store, marks, report)
    _copy(rows, gone, alias, report, lock)


def _read(
    store: RedisStore, marks: list[_Mark], report: SyncReport
) -> tuple[list[IdempotencyRecord], list[tuple[str, str]]]:
    """The rows to upsert and the ``(scope, key)`` of rows to delete, as Redis has them now."""
    from ..models import IdempotencyRecord

    names = [json.loads(mark.member) for mark in marks]
    with store.connection.pipeline(transaction=False) as pipe:
        for scope, key in names:
            pipe.exists(store.keys(scope, key).record)
            pipe.hmget(store.keys(scope, key).record, FIELDS)
        # A key holding another type answers HMGET with an error: that record is damaged.
        replies = pipe.execute(raise_on_error=False)
    rows: list[IdempotencyRecord] = []
    gone: list[tuple[str, str]] = []
    for index, ((scope, key), mark) in enumerate(zip(names, marks, strict=True)):
        exists, values = replies[2 * index], replies[2 * index + 1]
        if isinstance(exists, Exception):
            raise exists
        if exists:
            try:
                if isinstance(values, Exception):
                    raise ValueError(str(values))
                record = record_from_values(values)
            except ValueError as exc:
                report.damaged += 1
                logger.error(
                    "django-onceonly: the audit sync cannot read the Redis record of key %r "
                    "(scope %r): %s. It is left out; see 'Damaged records' in the Redis docs.",
                    key,
                    scope,
                    exc,
                )
                continue
            rows.append(
                IdempotencyRecord(
                    scope=scope, key=key, **{name: getattr(record, name) for name in COPIED_FIELDS}
                )
            )
        elif mark.mark.startswith("d"):
            gone.append((scope, key))
        # Otherwise Redis expired it (past expires_at and the grace): the table keeps its
        # last copy, which onceonly_purge removes like any expired row.
    return rows, gone


def _copy(
    rows: list[IdempotencyRecord],
    gone: list[tuple[str, str]],
    alias: str,
    report: SyncReport,
    lock: _SyncLock | None,
) -> None:
    """Upsert ``rows`` and delete ``gone`` in one transaction (fenced by ``lock``)."""
    from ..models import IdempotencyRecord

    # MySQL and MariaDB upsert on any unique key and take no conflict target.
    target = connections[alias].features.supports_update_conflicts_with_target
    with transaction.atomic(using=alias):
        manager = IdempotencyRecord.objects.using(alias)
        if rows:
            manager.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["scope", "key"] if target else None,
                update_fields=COPIED_FIELDS,
            )
        for chunk in _chunks(gone, 200):
            condition = Q()
            for scope, key in chunk:
                condition |= Q(scope=scope, key=key)
            deleted, _ = manager.filter(condition).delete()
            report.deleted += deleted
        if lock is not None:
            # The last step before the commit: a sync that stalled past its lease rolls
            # back here rather than overwrite what a newer sync copied meanwhile.
            lock.renew()
    report.copied += len(rows)


def _unmark(store: RedisStore, marks: list[_Mark], report: SyncReport) -> None:
    """Remove each mark that is still the one read; a newer mark waits for the next pass."""
    by_shard: dict[str, list[str]] = {}
    for mark in marks:
        by_shard.setdefault(mark.shard, []).extend((mark.member, mark.mark))
    _UNMARK.load(store.connection)
    with store.connection.pipeline(transaction=False) as pipe:
        for shard, pairs in by_shard.items():
            pipe.evalsha(_UNMARK.sha, 1, store.shard_keys(shard)[0], *pairs)
        removed = pipe.execute()
    report.pending += len(marks) - sum(int(n) for n in removed)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
