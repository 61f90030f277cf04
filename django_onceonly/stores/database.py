"""``DatabaseStore``: records in the ``IdempotencyRecord`` table, one statement per step.

Every hot-path operation is a single SQL statement:

- claim: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (MariaDB: ``ON DUPLICATE KEY
  UPDATE`` no-op ``RETURNING``) acquires an absent key; a key taken is then read with a
  ``SELECT``. A key this process has recently seen taken is read first instead, so a
  duplicate in a storm costs one ``SELECT``: no write, no commit to wait for. The
  duplicate is counted later, in batches (:mod:`~django_onceonly.stores.duplicates`).
  Taking over an expired record or a stale lease is rarer and is one compare-and-swap
  ``UPDATE`` on the owner token it saw;
- complete, fail, extend: one conditional ``UPDATE`` fenced by the owner token;
- release: one conditional ``DELETE`` fenced by the owner token.

The statements themselves are built in ``sql.py``, by name.

By default the statements run on a connection of their own when the caller is inside
``transaction.atomic()``, so the claim is durable even if the caller's transaction rolls
back (the email has gone out; the claim must stay). With ``transactional=True`` they run
on the caller's connection, inside its transaction.

The module stays whole past the house's 400 lines: connections, retries on deadlock
and every primitive of the contract share one connection policy; the SQL itself is in
:mod:`~django_onceonly.stores.sql`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from django.core.signals import request_finished
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils.dateparse import parse_datetime

from ..conf import conf
from ..exceptions import DamagedRecord, StoreUnavailable
from ..rules import Status
from . import duplicates
from .base import TIME_FIELDS, BaseStore, ClaimRequest, ClaimResult, Record, TakenKeys
from .duplicates import DuplicateCount
from .sql import COLUMNS, Params, Statement, Statements, jsonb_text, row_params

logger = logging.getLogger("django_onceonly")

T = TypeVar("T")

DATETIME_COLUMNS = TIME_FIELDS
# MySQL/MariaDB "deadlock found" and "lock wait timeout"; PostgreSQL deadlock and
# serialization failure. In autocommit the statement was rolled back whole: safe to rerun.
RETRYABLE_CODES = frozenset({1213, 1205, "40P01", "40001"})
MAX_ATTEMPTS = 8


# Connections of our own, per thread and per alias, used when the caller is inside a
# transaction.atomic() block and the claim must commit independently of it.
_local = threading.local()
# Connections inherited from a parent process are never closed by the child (that would
# close the parent's socket); they are parked here so they are never garbage-collected.
_inherited: list[BaseDatabaseWrapper] = []


def _private_connection(alias: str) -> BaseDatabaseWrapper:
    pool: dict[str, BaseDatabaseWrapper] | None = getattr(_local, "pool", None)
    if pool is None or getattr(_local, "pid", None) != os.getpid():
        if pool:
            _inherited.extend(pool.values())
        pool = _local.pool = {}
        _local.pid = os.getpid()
    conn = pool.get(alias)
    if conn is None:
        conn = connections.create_connection(alias)
        pool[alias] = conn
    return conn


def close_private_connections(**kwargs: Any) -> None:
    """Close this thread's private connections if unusable or past ``CONN_MAX_AGE``.

    Connected to ``request_finished`` like Django's own ``close_old_connections``.
    """
    pool: dict[str, BaseDatabaseWrapper] | None = getattr(_local, "pool", None)
    if pool and getattr(_local, "pid", None) == os.getpid():
        for conn in pool.values():
            conn.close_if_unusable_or_obsolete()


def close_connections() -> None:
    """Close this thread's private connections now (for worker threads and test teardown)."""
    pool: dict[str, BaseDatabaseWrapper] | None = getattr(_local, "pool", None)
    if pool and getattr(_local, "pid", None) == os.getpid():
        for conn in pool.values():
            conn.close()


request_finished.connect(close_private_connections, dispatch_uid="django_onceonly.close_private")


# A cursor kept open on a PostgreSQL connection between calls: see _take_kept_cursor.
_KEPT_CURSOR = "_onceonly_kept_cursor"


def _take_kept_cursor(conn: BaseDatabaseWrapper) -> CursorWrapper | None:
    """The cursor kept on ``conn``, taken out for one use (put back after it); ``None``
    when a fresh cursor is to be opened and closed as usual.

    A new psycopg cursor costs more than its opening: its first statement looks up a
    loader for each column. Keeping one made a duplicate check another 6 to 9% cheaper
    (25 to 40 µs on a shared VM). psycopg holds no server-side state for a cursor (the
    whole result is read at once), so one kept between statements is a plain Python
    object. What ``conn.cursor()`` does on each call still happens here: the health
    check of ``CONN_HEALTH_CHECKS`` (once per request, as Django does it),
    ``ensure_connection()`` (reconnecting after Django closed the connection:
    CONN_MAX_AGE, an unusable connection; refused inside an event loop), the thread
    check, and the statements run through Django's ``CursorWrapper`` (its error
    wrapping, execute_wrapper()s, the broken-transaction check). A cursor from an
    earlier connection is never reused, and with ``queries_logged`` (DEBUG,
    assertNumQueries) each call gets Django's logging cursor. Kept on the connection
    object, the cursor lives and dies with it; taken out while in use, it is never
    shared, even by nested calls.
    """
    if conn.vendor != "postgresql" or conn.queries_logged:
        # Not elsewhere: an SQLite cursor not read to its end holds its statement, and
        # a read lock, until it is closed; MySQL was not measured.
        return None
    conn.close_if_health_check_failed()  # CONN_HEALTH_CHECKS: once per request
    conn.ensure_connection()
    conn.validate_thread_sharing()
    kept: CursorWrapper | None = conn.__dict__.pop(_KEPT_CURSOR, None)
    if kept is None or kept.cursor.connection is not conn.connection or kept.cursor.closed:
        kept = conn.cursor()
    return kept


def _in_callers_transaction(conn: BaseDatabaseWrapper) -> bool:
    """True when the caller has an atomic block of its own open on ``conn``.

    Inside Django's ``TestCase`` (whose outermost blocks are the test's) the answer is
    always False: the claim then belongs to the test's transaction and is rolled back
    with it, so tests stay isolated and no second connection keeps the test database
    from being dropped. Testing what a rollback of your own ``atomic()`` does to a claim
    needs ``TransactionTestCase`` (pytest-django: ``django_db(transaction=True)``).
    """
    if not conn.in_atomic_block:
        return False
    return not getattr(conn.atomic_blocks[0], "_from_testcase", False)


def _to_datetime(value: Any, zone: dt.tzinfo | None) -> dt.datetime | None:
    """A time as read by the cursor, as Django's own field would return it.

    ``zone`` is ``connection.timezone``: ``None`` when ``USE_TZ`` is off. PostgreSQL sends
    text with its offset (see ``sql.TEXT_ON_POSTGRESQL``; DateStyle ISO, which psycopg 3
    requires anyway), in the session's time zone: Django's loader returns it in ``zone``,
    or naive when ``zone`` is None. MySQL sends naive datetimes and SQLite naive text, in
    ``zone``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is None:
            raise ValueError(f"cannot read datetime {value!r}")
        value = parsed
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        return value if zone is None else value.replace(tzinfo=zone)
    if zone is None:
        return value.replace(tzinfo=None)
    return value if value.tzinfo is zone else value.astimezone(zone)


def _load_json(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode()
    if isinstance(value, str):
        return json.loads(value)
    return value


def _error_code(exc: BaseException) -> Any:
    cause = exc.__cause__
    if cause is None:
        return None
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if sqlstate:
        return sqlstate
    args = getattr(cause, "args", ())
    return args[0] if args else None


class DatabaseStore(BaseStore):
    """Records in the ``IdempotencyRecord`` table of ``ONCEONLY_DATABASE``.

    Works on PostgreSQL, MariaDB (10.5+), MySQL 8 and SQLite (3.35+).
    """

    supports_transactions = True

    def __init__(self, using: str | None = None) -> None:
        self._using = using
        self._taken = TakenKeys()

    @property
    def alias(self) -> str:
        return self._using or conf.ONCEONLY_DATABASE

    # -- connections and statements --------------------------------------------------

    def _connection(self, transactional: bool) -> tuple[BaseDatabaseWrapper, bool]:
        """Return the connection to use and whether it runs in autocommit."""
        conn = connections[self.alias]
        if transactional:
            return conn, not conn.in_atomic_block
        if _in_callers_transaction(conn):
            return _private_connection(self.alias), True
        return conn, not conn.in_atomic_block

    @contextmanager
    def _cursor(self, conn: BaseDatabaseWrapper) -> Iterator[CursorWrapper]:
        try:
            kept = _take_kept_cursor(conn)
            if kept is None:
                with conn.cursor() as cursor:
                    yield cursor
            else:
                try:
                    yield kept
                except BaseException:
                    kept.close()  # an error mid-statement: the next call opens a fresh one
                    raise
                conn.__dict__[_KEPT_CURSOR] = kept
        except (OperationalError, InterfaceError) as exc:
            # Only these mean the database cannot be reached or cannot serve now. Data
            # and programming errors (a missing migration, say) are bugs: they propagate
            # as themselves, so ONCEONLY_ON_STORE_ERROR="run" never runs work past them.
            if _error_code(exc) in RETRYABLE_CODES:
                raise
            if not conn.in_atomic_block:
                # A broken connection is dropped so the next call reconnects once the
                # database is back, as Django does between requests.
                with suppress(DatabaseError):
                    conn.close_if_unusable_or_obsolete()
            hint = ""
            if conn.vendor == "sqlite" and conn is not connections[self.alias]:
                # SQLite has one writer: a claim committing on its own connection waits
                # for the caller's transaction if that has written, then times out.
                hint = (
                    " (SQLite allows one writer: if your transaction.atomic() block has "
                    "written already, call check_lock() before writing, or pass "
                    "transactional=True to make the claim part of your transaction)"
                )
            raise StoreUnavailable(f"database {conn.alias!r} is unavailable: {exc}{hint}") from exc

    def _run(self, autocommit: bool, operation: Callable[[], T]) -> T:
        """Run ``operation``, rerunning it after a deadlock when that is safe (autocommit)."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return operation()
            except DatabaseError as exc:
                if isinstance(exc, IntegrityError) or _error_code(exc) not in RETRYABLE_CODES:
                    raise
                if not autocommit or attempt == MAX_ATTEMPTS:
                    raise StoreUnavailable(f"database kept deadlocking: {exc}") from exc
                time.sleep(0.001 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def statements(self, conn: BaseDatabaseWrapper) -> Statements:
        """The statements for ``conn``'s database, built once per vendor."""
        try:
            mariadb = getattr(conn, "mysql_is_mariadb", False)
        except DatabaseError as exc:
            # Telling MariaDB from MySQL opens a connection the first time; a fresh
            # private connection may find the server gone.
            raise StoreUnavailable(f"database {conn.alias!r} is unavailable: {exc}") from exc
        key = (conn.vendor, mariadb)
        statements = _STATEMENTS.get(key)
        if statements is None:
            statements = _STATEMENTS[key] = Statements(conn)
        return statements

    def _record(self, conn: BaseDatabaseWrapper, row: Sequence[Any]) -> Record:
        # The claim may return one more column than the record has (see Statements).
        values = dict(zip(COLUMNS, row[: len(COLUMNS)], strict=True))
        try:
            zone = conn.timezone
            for name in DATETIME_COLUMNS:
                values[name] = _to_datetime(values[name], zone)
            values["result"] = _load_json(values["result"])
            values["metadata"] = _load_json(values["metadata"]) or {}
            values["duplicates_blocked"] = int(values["duplicates_blocked"])
        except (ValueError, TypeError) as exc:
            raise DamagedRecord(
                str(values["key"]), f"{type(exc).__name__}: {exc}", str(values["scope"])
            ) from exc
        return Record(**values)

    def _write(
        self, conn: BaseDatabaseWrapper, autocommit: bool, statement: Statement, values: Params
    ) -> int:
        """Run one write; return how many rows it changed."""
        params = statement.params(values)

        def write() -> int:
            with self._cursor(conn) as cursor:
                cursor.execute(statement.sql, params)
                return int(cursor.rowcount)

        return self._run(autocommit, write)

    @staticmethod
    def _json(conn: BaseDatabaseWrapper, text: str | None) -> str | None:
        return jsonb_text(text) if text is not None and conn.vendor == "postgresql" else text

    def claim_values(self, conn: BaseDatabaseWrapper, request: ClaimRequest) -> Params:
        """The named parameters of the claim statements (``statements(conn).claim``...)."""
        adapt = conn.ops.adapt_datetimefield_value
        return {
            "scope": request.scope,
            "key": request.key,
            "token": request.token,
            "fingerprint": request.fingerprint,
            "task_name": request.task_name,
            "task_id": request.task_id,
            "metadata": self._json(conn, request.metadata_json),
            "now": adapt(request.now),
            "lease_expires_at": adapt(request.lease_expires_at),
        }

    # -- the primitives --------------------------------------------------------------

    def _claim(self, request: ClaimRequest) -> ClaimResult:
        conn, autocommit = self._connection(request.transactional)
        return self._run(autocommit, lambda: self._claim_on(conn, request, autocommit))

    def _claim_on(
        self, conn: BaseDatabaseWrapper, request: ClaimRequest, autocommit: bool = False
    ) -> ClaimResult:
        sql = self.statements(conn)
        values = self.claim_values(conn, request)
        if request.resume_token:
            resumed = self._resume(conn, request, values)
            if resumed is not None:
                return resumed
        # Which statement first? A duplicate is cheapest as one plain SELECT (no write, no
        # commit to wait for); a new key as one INSERT ... ON CONFLICT DO NOTHING
        # RETURNING. A key this process has recently seen taken is read first: duplicates
        # come in storms on the same keys. Any other key is inserted first, and read only
        # if it turns out taken (that insert writes nothing either). Either order gives
        # the same answer; only the cost differs. (One statement for both, a
        # data-modifying CTE, measured 2.4 to 2.8 times the floor's INSERT even when it
        # inserted nothing: see docs/stores.md.) Inside the caller's transaction the
        # insert always comes first: a plain read there may see the transaction's
        # snapshot (REPEATABLE READ), not the record as it is now.
        name = (request.scope, request.key)
        read_first = autocommit and name in self._taken
        for _attempt in range(MAX_ATTEMPTS):
            with self._cursor(conn) as cursor:
                row = None
                if read_first:
                    cursor.execute(sql.select.sql, sql.select.params(values))
                    row = cursor.fetchone()
                if row is None:
                    cursor.execute(sql.claim.sql, sql.claim.params(values))
                    # RETURNING gives the row inserted; none when the key was taken (or on
                    # MySQL 8, which has no RETURNING): then read the record that holds it.
                    row = cursor.fetchone() if sql.returning else None
                    if row is None:
                        cursor.execute(sql.select.sql, sql.select.params(values))
                        row = cursor.fetchone()
            if row is None:
                continue  # released between the two statements: try again
            record = self._record(conn, row)
            if name not in self._taken:
                self._taken.add(name)
            if record.owner_token == request.token:
                return ClaimResult(acquired=True, record=record)
            if not (record.is_expired(request.now) or record.lease_is_stale(request.now)):
                return ClaimResult(acquired=False, record=record)
            result = self._take_over(conn, request, record, values)
            if result is not None:
                return result
            # Someone else acted on the same stale record first: look again.
        raise StoreUnavailable(
            f"could not settle the claim on {request.key!r} after {MAX_ATTEMPTS} attempts"
        )

    def _claim_many(self, requests: list[ClaimRequest]) -> list[ClaimResult]:
        """One multi-row insert for the whole batch, one read of the keys already taken;
        per-key follow-ups only where needed.

        The rows are written in key order, so that two batches sharing keys lock them in
        the same order and cannot deadlock each other. A key whose record is expired or
        whose lease is stale is then settled on its own, exactly as :meth:`_claim` would.
        """
        if len(requests) < 2:  # the single claim (a duplicate: one read)
            return [self._claim(request) for request in requests]
        transactional = requests[0].transactional
        conn, autocommit = self._connection(transactional)
        sql = self.statements(conn)
        if (
            not sql.returning
            or any(request.resume_token for request in requests)
            or any(request.transactional != transactional for request in requests)
        ):
            return super()._claim_many(requests)  # MySQL 8 has no RETURNING
        ordered = sorted(requests, key=lambda request: (request.scope, request.key))
        values: dict[str, Any] = {}
        for index, request in enumerate(ordered):
            values.update(row_params(self.claim_values(conn, request), index))
        statement = sql.claim_many(len(ordered))

        def upsert() -> list[Any]:
            with self._cursor(conn) as cursor:
                cursor.execute(statement.sql, statement.params(values))
                return list(cursor.fetchall())

        rows = self._run(autocommit, upsert)
        records = [self._record(conn, row) for row in rows]
        found = {(record.scope, record.key): record for record in records}
        # The keys already taken (PostgreSQL and SQLite return only the rows inserted):
        # one read for all of them.
        taken = [request for request in ordered if (request.scope, request.key) not in found]
        if taken:
            keys: dict[str, Any] = {}
            for index, request in enumerate(taken):
                keys.update({f"scope_{index}": request.scope, f"key_{index}": request.key})
            select = sql.select_many(len(taken))

            def read() -> list[Any]:
                with self._cursor(conn) as cursor:
                    cursor.execute(select.sql, select.params(keys))
                    return list(cursor.fetchall())

            for row in self._run(autocommit, read):
                existing = self._record(conn, row)
                found[(existing.scope, existing.key)] = existing
        results: list[ClaimResult] = []
        try:
            for request in requests:
                record = found.get((request.scope, request.key))
                if record is not None and record.owner_token == request.token:
                    results.append(ClaimResult(acquired=True, record=record))
                elif record is not None and not (
                    record.is_expired(request.now) or record.lease_is_stale(request.now)
                ):
                    results.append(ClaimResult(acquired=False, record=record))
                else:
                    # Rare: an expired record or a stale lease (or a record released
                    # between the two statements): the single claim settles it.
                    results.append(self._claim(request))
        except BaseException:
            self._release_acquired(requests, results)
            raise
        return results

    def _resume(
        self, conn: BaseDatabaseWrapper, request: ClaimRequest, values: Params
    ) -> ClaimResult | None:
        """Hand the record from ``resume_token`` to ``token``; ``None`` if it is not ours."""
        sql = self.statements(conn)
        with self._cursor(conn) as cursor:
            cursor.execute(sql.resume.sql, sql.resume.params(values, owner=request.resume_token))
            if cursor.rowcount != 1:
                return None
            # The write above is the claim; this read only fills in the snapshot
            # (MariaDB has no UPDATE ... RETURNING).
            cursor.execute(sql.select.sql, sql.select.params(values))
            row = cursor.fetchone()
        if row is None:
            return None
        record = self._record(conn, row)
        if record.owner_token != request.token:
            return None
        return ClaimResult(acquired=True, record=record)

    def _take_over(
        self, conn: BaseDatabaseWrapper, request: ClaimRequest, seen: Record, values: Params
    ) -> ClaimResult | None:
        """Act on an expired record or a stale lease with one compare-and-swap.

        Returns ``None`` when the record changed since it was seen.
        """
        sql = self.statements(conn)
        expired = seen.is_expired(request.now)
        if not expired and request.after_lease == "hold":
            error = (
                f"lease ended at {seen.lease_expires_at:%Y-%m-%d %H:%M:%S%z} without an outcome; "
                "the owner may have crashed after acting. Release it to run again."
            )
            params = sql.hold.params(values, owner=seen.owner_token, error=error)
            with self._cursor(conn) as cursor:
                cursor.execute(sql.hold.sql, params)
                if cursor.rowcount != 1:
                    return None
            held = Record(
                **{
                    **{name: getattr(seen, name) for name in COLUMNS},
                    "status": Status.UNKNOWN.value,
                    "error": error,
                    "updated_at": request.now,
                    "duplicates_blocked": seen.duplicates_blocked + 1,
                    "last_duplicate_at": request.now,
                }
            )
            return ClaimResult(acquired=False, record=held, lease_expired=True)
        if (
            not expired
            and request.fingerprint
            and seen.fingerprint
            and request.fingerprint != seen.fingerprint
        ):
            return ClaimResult(acquired=False, record=seen)
        statement = sql.take_over_expired if expired else sql.take_over_stale
        with self._cursor(conn) as cursor:
            cursor.execute(statement.sql, statement.params(values, owner=seen.owner_token))
            if cursor.rowcount != 1:
                return None
        record = Record(
            scope=request.scope,
            key=request.key,
            status=Status.IN_PROGRESS.value,
            owner_token=request.token,
            fingerprint=request.fingerprint,
            task_name=request.task_name,
            task_id=request.task_id,
            metadata=request.metadata,
            created_at=request.now if expired else seen.created_at,
            updated_at=request.now,
            lease_expires_at=request.lease_expires_at,
            duplicates_blocked=0 if expired else seen.duplicates_blocked,
            last_duplicate_at=None if expired else seen.last_duplicate_at,
        )
        return ClaimResult(acquired=True, record=record, lease_expired=not expired)

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
        conn, autocommit = self._connection(transactional)
        adapt = conn.ops.adapt_datetimefield_value
        values: Params = {
            "scope": scope,
            "key": key,
            "owner": token,
            "status": status,
            "result": self._json(conn, result_json),
            "error": error,
            "now": adapt(now),
            "expires_at": adapt(expires_at),
        }
        return self._write(conn, autocommit, self.statements(conn).finish, values) == 1

    def _release(self, scope: str, key: str, token: str, *, transactional: bool) -> bool:
        conn, autocommit = self._connection(transactional)
        values: Params = {"scope": scope, "key": key, "owner": token}
        return self._write(conn, autocommit, self.statements(conn).release, values) == 1

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
        conn, autocommit = self._connection(transactional)
        adapt = conn.ops.adapt_datetimefield_value
        values: Params = {
            "scope": scope,
            "key": key,
            "owner": token,
            "lease_expires_at": adapt(lease_expires_at),
            "now": adapt(now),
        }
        return self._write(conn, autocommit, self.statements(conn).extend, values) == 1

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
        # One DELETE with the whole condition in it: never QuerySet.delete(), which
        # selects first and deletes by primary key once any delete receiver exists.
        conn, autocommit = self._connection(False)
        sql = self.statements(conn)
        statement = sql.release_if_unchanged if allow_live else sql.release_if_unchanged_unless_live
        values: Params = {
            "scope": scope,
            "key": key,
            "owner": owner_token,
            "status": status,
            "now": conn.ops.adapt_datetimefield_value(now),
        }
        return self._write(conn, autocommit, statement, values) == 1

    # -- duplicate counts ----------------------------------------------------------------

    def _add_duplicates(self, counts: Sequence[DuplicateCount]) -> list[DuplicateCount]:
        conn, autocommit = self._connection(False)
        self._add_duplicates_on(conn, autocommit, counts)
        return []  # one statement: all written, or an error

    def _add_duplicates_on(
        self, conn: BaseDatabaseWrapper, autocommit: bool, counts: Sequence[DuplicateCount]
    ) -> None:
        adapt = conn.ops.adapt_datetimefield_value
        values: dict[str, Any] = {}
        for index, count in enumerate(counts):
            values.update(
                {
                    f"scope_{index}": count.scope,
                    f"key_{index}": count.key,
                    f"created_{index}": adapt(count.created_at),
                    f"count_{index}": count.count,
                    f"at_{index}": adapt(count.last_at),
                }
            )
        self._write(conn, autocommit, self.statements(conn).add_duplicates(len(counts)), values)

    def _count_duplicate(self, request: ClaimRequest, record: Record) -> None:
        alias = self.alias
        conn = connections[alias]
        if conn.in_atomic_block and getattr(conn.atomic_blocks[0], "_from_testcase", False):
            # Under Django's TestCase every record lives in the test's transaction, which
            # the flusher thread's connection cannot see: count it at once, in that
            # transaction, or the count would be lost.
            count = DuplicateCount(request.scope, request.key, record.created_at, 1, request.now)
            self._add_duplicates_on(conn, False, [count])
            return
        # Counted against the database the record is in, even if ONCEONLY_DATABASE
        # changes before the flush (tests do that).
        target = self if self._using else _on_alias(type(self), alias)
        duplicates.add(target, request.scope, request.key, record.created_at, request.now)

    # -- reads and the operator's release ----------------------------------------------

    def get(self, scope: str, key: str) -> Record | None:
        conn, autocommit = self._connection(False)
        select = self.statements(conn).select

        def read() -> Record | None:
            with self._cursor(conn) as cursor:
                cursor.execute(select.sql, select.params({"scope": scope, "key": key}))
                row = cursor.fetchone()
            return None if row is None else self._record(conn, row)

        return self._run(autocommit, read)

    def force_release(self, scope: str, key: str) -> bool:
        conn, autocommit = self._connection(False)
        values: Params = {"scope": scope, "key": key}
        return self._write(conn, autocommit, self.statements(conn).force_release, values) > 0


_STATEMENTS: dict[tuple[str, bool], Statements] = {}


@functools.cache
def _on_alias(cls: type[DatabaseStore], alias: str) -> DatabaseStore:
    """The store of ``cls`` fixed on ``alias``, that buffered duplicate counts name."""
    return cls(alias)
