"""``DatabaseStore``: records in the ``IdempotencyRecord`` table, one statement per step.

Every hot-path operation is a single SQL statement:

- claim: ``INSERT ... ON CONFLICT (scope, key) DO UPDATE ... RETURNING`` on PostgreSQL
  and SQLite, ``INSERT ... ON DUPLICATE KEY UPDATE ... RETURNING`` on MariaDB. The insert
  acquires an absent key; on conflict the same statement counts the duplicate and hands
  back the blocking record. Taking over an expired record or a stale lease is rarer and
  is one compare-and-swap ``UPDATE`` on the owner token it saw;
- complete, fail, extend: one conditional ``UPDATE`` fenced by the owner token;
- release: one conditional ``DELETE`` fenced by the owner token.

By default the statements run on a connection of their own when the caller is inside
``transaction.atomic()``, so the claim is durable even if the caller's transaction rolls
back (the email has gone out; the claim must stay). With ``transactional=True`` they run
on the caller's connection, inside its transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from django.conf import settings
from django.core.signals import request_finished
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils.dateparse import parse_datetime

from ..conf import conf
from ..exceptions import LockLost, StoreUnavailable
from .base import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    RECORD_FIELDS,
    TIME_FIELDS,
    UNKNOWN,
    BaseStore,
    ClaimRequest,
    ClaimResult,
    Record,
)

logger = logging.getLogger("django_onceonly")

T = TypeVar("T")

COLUMNS = RECORD_FIELDS
JSON_COLUMNS = frozenset({"result", "metadata"})
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


def _to_datetime(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is None:
            raise ValueError(f"cannot read datetime {value!r}")
        value = parsed
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if settings.USE_TZ and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


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

    def __init__(self, using: str | None = None) -> None:
        self._using = using

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
            with conn.cursor() as cursor:
                yield cursor
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

    def _sql(self, conn: BaseDatabaseWrapper) -> _Statements:
        try:
            mariadb = getattr(conn, "mysql_is_mariadb", False)
        except DatabaseError as exc:
            # Telling MariaDB from MySQL opens a connection the first time; a fresh
            # private connection may find the server gone.
            raise StoreUnavailable(f"database {conn.alias!r} is unavailable: {exc}") from exc
        key = (conn.vendor, mariadb)
        statements = _STATEMENTS.get(key)
        if statements is None:
            statements = _STATEMENTS[key] = _Statements(conn)
        return statements

    def _record(self, row: Sequence[Any]) -> Record:
        # The claim may return one more column than the record has (see _Statements).
        values = dict(zip(COLUMNS, row[: len(COLUMNS)], strict=True))
        for name in DATETIME_COLUMNS:
            values[name] = _to_datetime(values[name])
        values["result"] = _load_json(values["result"])
        values["metadata"] = _load_json(values["metadata"]) or {}
        values["duplicates_blocked"] = int(values["duplicates_blocked"])
        return Record(**values)

    # -- the contract ----------------------------------------------------------------

    def claim(self, request: ClaimRequest) -> ClaimResult:
        conn, autocommit = self._connection(request.transactional)
        return self._run(autocommit, lambda: self._claim(conn, request, autocommit))

    def _claim(
        self, conn: BaseDatabaseWrapper, request: ClaimRequest, autocommit: bool = False
    ) -> ClaimResult:
        sql = self._sql(conn)
        adapt = conn.ops.adapt_datetimefield_value
        now = adapt(request.now)
        if request.resume_token:
            resumed = self._resume(conn, request)
            if resumed is not None:
                return resumed
        for _attempt in range(MAX_ATTEMPTS):
            with self._cursor(conn) as cursor:
                claim, extra = sql.claim, []
                # conn.autocommit is known once connected, that is inside this block.
                if autocommit and conn.autocommit and sql.claim_autocommit:
                    claim, extra = sql.claim_autocommit, [request.token]
                cursor.execute(
                    claim,
                    [
                        request.scope,
                        request.key,
                        IN_PROGRESS,
                        request.token,
                        request.fingerprint,
                        request.task_name,
                        request.task_id,
                        request.metadata_json,
                        now,
                        now,
                        adapt(request.lease_expires_at),
                        *extra,
                    ],
                )
                row = cursor.fetchone() if sql.returning else None
                if row is None:
                    cursor.execute(sql.select, [request.scope, request.key])
                    row = cursor.fetchone()
            if row is None:
                continue  # released between the two statements (MySQL 8 only): try again
            record = self._record(row)
            if record.owner_token == request.token:
                return ClaimResult(acquired=True, record=record)
            if not (record.is_expired(request.now) or record.lease_is_stale(request.now)):
                return ClaimResult(acquired=False, record=record)
            result = self._take_over(conn, request, record)
            if result is not None:
                return result
            # Someone else acted on the same stale record first: look again.
        raise StoreUnavailable(
            f"could not settle the claim on {request.key!r} after {MAX_ATTEMPTS} attempts"
        )

    def _resume(self, conn: BaseDatabaseWrapper, request: ClaimRequest) -> ClaimResult | None:
        """Hand the record from ``resume_token`` to ``token``; ``None`` if it is not ours."""
        sql = self._sql(conn)
        adapt = conn.ops.adapt_datetimefield_value
        now = adapt(request.now)
        with self._cursor(conn) as cursor:
            cursor.execute(
                sql.resume,
                [
                    request.token,
                    adapt(request.lease_expires_at),
                    now,
                    request.scope,
                    request.key,
                    request.resume_token,
                    IN_PROGRESS,
                    now,
                ],
            )
            if cursor.rowcount != 1:
                return None
            # The write above is the claim; this read only fills in the snapshot
            # (MariaDB has no UPDATE ... RETURNING).
            cursor.execute(sql.select, [request.scope, request.key])
            row = cursor.fetchone()
        if row is None:
            return None
        record = self._record(row)
        if record.owner_token != request.token:
            return None
        return ClaimResult(acquired=True, record=record)

    def _take_over(
        self, conn: BaseDatabaseWrapper, request: ClaimRequest, seen: Record
    ) -> ClaimResult | None:
        """Act on an expired record or a stale lease with one compare-and-swap.

        Returns ``None`` when the record changed since it was seen.
        """
        sql = self._sql(conn)
        adapt = conn.ops.adapt_datetimefield_value
        now = adapt(request.now)
        expired = seen.is_expired(request.now)
        if not expired and request.after_lease == "hold":
            error = (
                f"lease ended at {seen.lease_expires_at:%Y-%m-%d %H:%M:%S%z} without an outcome; "
                "the owner may have crashed after acting. Release it to run again."
            )
            with self._cursor(conn) as cursor:
                cursor.execute(
                    sql.hold,
                    [
                        UNKNOWN,
                        error,
                        now,
                        now,
                        request.scope,
                        request.key,
                        seen.owner_token,
                        IN_PROGRESS,
                        now,
                    ],
                )
                if cursor.rowcount != 1:
                    return None
            held = Record(
                **{
                    **{name: getattr(seen, name) for name in COLUMNS},
                    "status": UNKNOWN,
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
        values = [
            IN_PROGRESS,
            request.token,
            request.fingerprint,
            request.task_name,
            request.task_id,
            request.metadata_json,
            now,
            adapt(request.lease_expires_at),
        ]
        if expired:
            statement = sql.take_over_expired
            values += [now, request.scope, request.key, seen.owner_token, now]
        else:
            statement = sql.take_over_stale
            values += [request.scope, request.key, seen.owner_token, IN_PROGRESS, now]
        with self._cursor(conn) as cursor:
            cursor.execute(statement, values)
            if cursor.rowcount != 1:
                return None
        record = Record(
            scope=request.scope,
            key=request.key,
            status=IN_PROGRESS,
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
        if status not in (COMPLETED, FAILED, UNKNOWN):
            raise ValueError(f"cannot finish with status {status!r}")
        conn, autocommit = self._connection(transactional)
        adapt = conn.ops.adapt_datetimefield_value
        params = [
            status,
            result_json,
            error,
            adapt(now),
            adapt(now),
            adapt(expires_at),
            scope,
            key,
            token,
            IN_PROGRESS,
            UNKNOWN,
        ]
        self._write_owned(
            conn, autocommit, self._sql(conn).finish, params, key, f"finish as {status}"
        )

    def _write_owned(
        self,
        conn: BaseDatabaseWrapper,
        autocommit: bool,
        statement: str,
        params: list[Any],
        key: str,
        what: str,
    ) -> None:
        def write() -> int:
            with self._cursor(conn) as cursor:
                cursor.execute(statement, params)
                return int(cursor.rowcount)

        if self._run(autocommit, write) != 1:
            raise LockLost(
                f"cannot {what} key {key!r}: this owner no longer holds it "
                "(its lease was taken over, or the key was released or finished)"
            )

    def release(self, scope: str, key: str, token: str, *, transactional: bool = False) -> None:
        conn, autocommit = self._connection(transactional)
        params = [scope, key, token, IN_PROGRESS, UNKNOWN]
        self._write_owned(conn, autocommit, self._sql(conn).release, params, key, "release")

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
        conn, autocommit = self._connection(transactional)
        adapt = conn.ops.adapt_datetimefield_value
        params = [adapt(lease_expires_at), adapt(now), scope, key, token, IN_PROGRESS]
        self._write_owned(conn, autocommit, self._sql(conn).extend, params, key, "extend")

    def get(self, scope: str, key: str) -> Record | None:
        conn, autocommit = self._connection(False)

        def read() -> Record | None:
            with self._cursor(conn) as cursor:
                cursor.execute(self._sql(conn).select, [scope, key])
                row = cursor.fetchone()
            return None if row is None else self._record(row)

        return self._run(autocommit, read)

    def force_release(self, scope: str, key: str) -> bool:
        conn, autocommit = self._connection(False)

        def delete() -> bool:
            with self._cursor(conn) as cursor:
                cursor.execute(self._sql(conn).force_release, [scope, key])
                return bool(cursor.rowcount)

        return self._run(autocommit, delete)

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
        conn, autocommit = self._connection(False)
        sql = self._sql(conn)
        statement = sql.release_if_unchanged
        params: list[Any] = [scope, key, owner_token, status]
        if not allow_live:
            statement = sql.release_if_unchanged_unless_live
            params += [IN_PROGRESS, conn.ops.adapt_datetimefield_value(now)]

        def delete() -> bool:
            # One DELETE with the whole condition in it: never QuerySet.delete(), which
            # selects first and deletes by primary key once any delete receiver exists.
            with self._cursor(conn) as cursor:
                cursor.execute(statement, params)
                return bool(cursor.rowcount == 1)

        return self._run(autocommit, delete)


class _Statements:
    """The SQL for one database vendor, built once from the model's table."""

    def __init__(self, conn: BaseDatabaseWrapper) -> None:
        from ..models import IdempotencyRecord

        meta = IdempotencyRecord._meta
        q = conn.ops.quote_name
        table = q(meta.db_table)
        column = {name: q(meta.get_field(name).column or name) for name in COLUMNS}  # type: ignore[union-attr]
        vendor = conn.vendor
        mariadb = bool(getattr(conn, "mysql_is_mariadb", False))
        self.returning = vendor in ("postgresql", "sqlite") or mariadb
        json_param = "CAST(%s AS jsonb)" if vendor == "postgresql" else "%s"

        def read(name: str) -> str:
            if name in JSON_COLUMNS and vendor == "postgresql":
                return f"{column[name]}::text"
            return column[name]

        selected = ", ".join(read(name) for name in COLUMNS)
        c = column
        insert = (
            f"INSERT INTO {table} ({', '.join(column[name] for name in COLUMNS)}) VALUES "
            f"(%s, %s, %s, %s, %s, NULL, '', %s, %s, {json_param}, %s, %s, NULL, %s, NULL, 0, NULL)"
        )
        if vendor == "mysql":
            stale = (
                f"({c['expires_at']} IS NOT NULL AND {c['expires_at']} <= VALUES({c['created_at']})) "
                f"OR ({c['status']} = VALUES({c['status']}) "
                f"AND {c['lease_expires_at']} <= VALUES({c['created_at']}))"
            )
            self.claim = (
                f"{insert} ON DUPLICATE KEY UPDATE "
                f"{c['duplicates_blocked']} = IF({stale}, {c['duplicates_blocked']}, "
                f"{c['duplicates_blocked']} + 1), "
                f"{c['last_duplicate_at']} = IF({stale}, {c['last_duplicate_at']}, "
                f"VALUES({c['created_at']}))"
            )
        else:
            t = table
            stale = (
                f"({t}.{c['expires_at']} IS NOT NULL AND {t}.{c['expires_at']} <= excluded.{c['created_at']}) "
                f"OR ({t}.{c['status']} = excluded.{c['status']} "
                f"AND {t}.{c['lease_expires_at']} <= excluded.{c['created_at']})"
            )
            self.claim = (
                f"{insert} ON CONFLICT ({c['scope']}, {c['key']}) DO UPDATE SET "
                f"{c['duplicates_blocked']} = CASE WHEN {stale} THEN {t}.{c['duplicates_blocked']} "
                f"ELSE {t}.{c['duplicates_blocked']} + 1 END, "
                f"{c['last_duplicate_at']} = CASE WHEN {stale} THEN {t}.{c['last_duplicate_at']} "
                f"ELSE excluded.{c['created_at']} END"
            )
        if self.returning:
            self.claim += f" RETURNING {selected}"
        # A claim that finds the key taken writes nothing that matters (a counter and a
        # time), yet in autocommit its commit would wait for the WAL flush like a real
        # claim: on PostgreSQL that wait is most of a duplicate check's cost. Such a claim
        # commits asynchronously instead (only that statement's own transaction; a server
        # crash may lose the last few counts, never a claim). Not when the statement runs
        # in the caller's transaction: that would make the caller's commit asynchronous.
        self.claim_autocommit: str | None = None
        if vendor == "postgresql":
            self.claim_autocommit = (
                f"{self.claim}, CASE WHEN {table}.{c['owner_token']} <> %s "
                "THEN set_config('synchronous_commit', 'off', true) END"
            )
        where_key = f"{c['scope']} = %s AND {c['key']} = %s"
        self.select = f"SELECT {selected} FROM {table} WHERE {where_key}"
        owned = f"{where_key} AND {c['owner_token']} = %s"
        self.hold = (
            f"UPDATE {table} SET {c['status']} = %s, {c['error']} = %s, {c['updated_at']} = %s, "
            f"{c['duplicates_blocked']} = {c['duplicates_blocked']} + 1, {c['last_duplicate_at']} = %s "
            f"WHERE {owned} AND {c['status']} = %s AND {c['lease_expires_at']} <= %s"
        )
        claimed = (
            f"{c['status']} = %s, {c['owner_token']} = %s, {c['fingerprint']} = %s, "
            f"{c['task_name']} = %s, {c['task_id']} = %s, {c['metadata']} = {json_param}, "
            f"{c['updated_at']} = %s, {c['lease_expires_at']} = %s"
        )
        self.take_over_expired = (
            f"UPDATE {table} SET {claimed}, {c['created_at']} = %s, {c['result']} = NULL, "
            f"{c['error']} = '', {c['completed_at']} = NULL, {c['expires_at']} = NULL, "
            f"{c['duplicates_blocked']} = 0, {c['last_duplicate_at']} = NULL "
            f"WHERE {owned} AND {c['expires_at']} <= %s"
        )
        self.resume = (
            f"UPDATE {table} SET {c['owner_token']} = %s, {c['lease_expires_at']} = %s, "
            f"{c['updated_at']} = %s WHERE {owned} AND {c['status']} = %s "
            f"AND ({c['expires_at']} IS NULL OR {c['expires_at']} > %s)"
        )
        self.take_over_stale = (
            f"UPDATE {table} SET {claimed} "
            f"WHERE {owned} AND {c['status']} = %s AND {c['lease_expires_at']} <= %s"
        )
        self.finish = (
            f"UPDATE {table} SET {c['status']} = %s, {c['result']} = {json_param}, {c['error']} = %s, "
            f"{c['updated_at']} = %s, {c['completed_at']} = %s, {c['lease_expires_at']} = NULL, "
            f"{c['expires_at']} = %s WHERE {owned} AND {c['status']} IN (%s, %s)"
        )
        self.release = f"DELETE FROM {table} WHERE {owned} AND {c['status']} IN (%s, %s)"
        self.extend = (
            f"UPDATE {table} SET {c['lease_expires_at']} = %s, {c['updated_at']} = %s "
            f"WHERE {owned} AND {c['status']} = %s"
        )
        self.force_release = f"DELETE FROM {table} WHERE {where_key}"
        self.release_if_unchanged = f"DELETE FROM {table} WHERE {owned} AND {c['status']} = %s"
        self.release_if_unchanged_unless_live = (
            f"{self.release_if_unchanged} AND NOT ({c['status']} = %s "
            f"AND {c['lease_expires_at']} IS NOT NULL AND {c['lease_expires_at']} > %s)"
        )


_STATEMENTS: dict[tuple[str, bool], _Statements] = {}
