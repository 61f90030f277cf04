"""The SQL of ``DatabaseStore``, built once per database vendor from the model, by name.

Every column is named through the model's field of the same name and every value is
bound by name (``%(token)s``, turned into the drivers' ``%s`` once), so the order of
``Record``'s fields (or the model's) carries no meaning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper

from ..rules import Status
from .base import RECORD_FIELDS, TIME_FIELDS

# Statements name every column and every parameter; nothing depends on the order of
# Record's fields (a test writes a distinct value into each and reads them back).
COLUMNS = RECORD_FIELDS
JSON_COLUMNS = frozenset({"result", "metadata"})
# Columns PostgreSQL returns as text (``::text``), which DatabaseStore._record parses.
# Django's timestamptz loader is pure Python and is built afresh for each column of each
# new cursor: the six times read as text, and parsed by datetime.fromisoformat, made a
# duplicate check 6 to 8% cheaper (25 to 40 µs of 430 to 470 on a shared VM). jsonb
# comes as text through Django anyway; the cast says so here too.
TEXT_ON_POSTGRESQL = JSON_COLUMNS | TIME_FIELDS

# A JSON number token (outside strings) that carries an exponent: jsonb stores numbers as
# PostgreSQL numeric, which prints 1e308 back as 1 followed by 308 zeros, a Python int.
_EXPONENT = re.compile(r"\d[eE][-+]?\d")
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?[eE][-+]?\d+')


def _positional(match: re.Match[str]) -> str:
    token = match.group()
    if token.startswith('"'):
        return token
    text = format(Decimal(token), "f")
    return text if "." in text else f"{text}.0"


def jsonb_text(text: str) -> str:
    """``text`` with every float in exponent notation written out with a decimal point.

    PostgreSQL's jsonb keeps a number's digits and scale but not its notation: ``1e308``
    comes back as an integer, ``1.0`` as ``1.0``. Written positionally (the same value,
    exactly) every float comes back as a float. ``-0.0`` comes back as ``0.0`` (numeric
    has no negative zero; the two are equal in Python).
    """
    if not _EXPONENT.search(text):
        return text
    return _JSON_TOKEN.sub(_positional, text)


Params = Mapping[str, Any]
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# Parameters every statement may name without the caller passing them.
_CONSTANTS: dict[str, Any] = {
    "in_progress": Status.IN_PROGRESS.value,
    "unknown": Status.UNKNOWN.value,
}


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement whose parameters are bound by name.

    Written with ``%(name)s`` placeholders and turned into the drivers' positional
    ``%s`` once; :meth:`params` lists the values in the order the placeholders need.
    """

    sql: str
    names: tuple[str, ...]

    @classmethod
    def build(cls, template: str) -> Statement:
        names: list[str] = []

        def positional(match: re.Match[str]) -> str:
            names.append(match.group(1))
            return "%s"

        return cls(_PLACEHOLDER.sub(positional, template), tuple(names))

    def params(self, values: Params, **more: Any) -> list[Any]:
        """The parameters, by name, from ``values``, ``more`` and the status constants."""
        merged = {**_CONSTANTS, **values, **more}
        return [merged[name] for name in self.names]


class Statements:
    """The SQL for one database vendor, built once from the model's table.

    Every column is named through the model's field of the same name and every value is
    bound by name, so the order of ``Record``'s fields (or the model's) carries no
    meaning. A field added to ``Record`` without a value below fails at the first use.
    """

    def __init__(self, conn: BaseDatabaseWrapper) -> None:
        from ..models import IdempotencyRecord

        meta = IdempotencyRecord._meta
        q = conn.ops.quote_name
        table = q(meta.db_table)
        c = {name: q(meta.get_field(name).column or name) for name in COLUMNS}  # type: ignore[union-attr]
        vendor = conn.vendor
        mariadb = bool(getattr(conn, "mysql_is_mariadb", False))
        self.returning = vendor in ("postgresql", "sqlite") or mariadb

        def json_param(name: str) -> str:
            return f"CAST(%({name})s AS jsonb)" if vendor == "postgresql" else f"%({name})s"

        def read(name: str) -> str:
            if name in TEXT_ON_POSTGRESQL and vendor == "postgresql":
                return f"{c[name]}::text"
            return c[name]

        selected = ", ".join(read(name) for name in COLUMNS)
        # What a claim inserts into each column of a new record.
        inserted = {
            "scope": "%(scope)s",
            "key": "%(key)s",
            "status": "%(in_progress)s",
            "owner_token": "%(token)s",
            "fingerprint": "%(fingerprint)s",
            "result": "NULL",
            "error": "''",
            "task_name": "%(task_name)s",
            "task_id": "%(task_id)s",
            "metadata": json_param("metadata"),
            "created_at": "%(now)s",
            "updated_at": "%(now)s",
            "completed_at": "NULL",
            "lease_expires_at": "%(lease_expires_at)s",
            "expires_at": "NULL",
            "duplicates_blocked": "0",
            "last_duplicate_at": "NULL",
        }
        head = f"INSERT INTO {table} ({', '.join(c[name] for name in COLUMNS)}) VALUES "
        row = f"({', '.join(inserted[name] for name in COLUMNS)})"
        where_key = f"{c['scope']} = %(scope)s AND {c['key']} = %(key)s"
        # A claim inserts the record if the key is free and otherwise only reads: it writes
        # nothing on a duplicate (the count is buffered, see stores/duplicates.py).
        if vendor == "mysql":
            # A no-op update: MariaDB then returns the existing row.
            conflict = f" ON DUPLICATE KEY UPDATE {c['scope']} = {c['scope']}"
        else:
            conflict = f" ON CONFLICT ({c['scope']}, {c['key']}) DO NOTHING"
        if self.returning:
            conflict += f" RETURNING {selected}"
        # The insert that acquires an absent key; on a key taken it writes nothing and
        # returns nothing (MariaDB: the existing row). See DatabaseStore._claim_on for
        # when a claim reads first.
        self.claim = Statement.build(head + row + conflict)
        # check_locks: the insert with one row per key, the parameters of row i named
        # with the suffix _i (see claim_many).
        self._many = (head, row, conflict)
        self._claim_many: dict[int, Statement] = {}
        self._select_many = f"SELECT {selected} FROM {table} WHERE "
        self._where_key = where_key
        self._dup_parts = self._add_duplicates_template(vendor, table, c, conn)
        self._dup_statements: dict[int, Statement] = {}
        self.select = Statement.build(f"SELECT {selected} FROM {table} WHERE {where_key}")
        owned = f"{where_key} AND {c['owner_token']} = %(owner)s"
        self.hold = Statement.build(
            f"UPDATE {table} SET {c['status']} = %(unknown)s, {c['error']} = %(error)s, "
            f"{c['updated_at']} = %(now)s, "
            f"{c['duplicates_blocked']} = {c['duplicates_blocked']} + 1, "
            f"{c['last_duplicate_at']} = %(now)s "
            f"WHERE {owned} AND {c['status']} = %(in_progress)s "
            f"AND {c['lease_expires_at']} <= %(now)s"
        )
        claimed = (
            f"{c['status']} = %(in_progress)s, {c['owner_token']} = %(token)s, "
            f"{c['fingerprint']} = %(fingerprint)s, {c['task_name']} = %(task_name)s, "
            f"{c['task_id']} = %(task_id)s, {c['metadata']} = {json_param('metadata')}, "
            f"{c['updated_at']} = %(now)s, {c['lease_expires_at']} = %(lease_expires_at)s"
        )
        self.take_over_expired = Statement.build(
            f"UPDATE {table} SET {claimed}, {c['created_at']} = %(now)s, {c['result']} = NULL, "
            f"{c['error']} = '', {c['completed_at']} = NULL, {c['expires_at']} = NULL, "
            f"{c['duplicates_blocked']} = 0, {c['last_duplicate_at']} = NULL "
            f"WHERE {owned} AND {c['expires_at']} <= %(now)s"
        )
        self.take_over_stale = Statement.build(
            f"UPDATE {table} SET {claimed} "
            f"WHERE {owned} AND {c['status']} = %(in_progress)s "
            f"AND {c['lease_expires_at']} <= %(now)s"
        )
        self.resume = Statement.build(
            f"UPDATE {table} SET {c['owner_token']} = %(token)s, "
            f"{c['lease_expires_at']} = %(lease_expires_at)s, {c['updated_at']} = %(now)s "
            f"WHERE {owned} AND {c['status']} = %(in_progress)s "
            f"AND ({c['expires_at']} IS NULL OR {c['expires_at']} > %(now)s)"
        )
        owners = f"{c['status']} IN (%(in_progress)s, %(unknown)s)"
        self.finish = Statement.build(
            f"UPDATE {table} SET {c['status']} = %(status)s, "
            f"{c['result']} = {json_param('result')}, {c['error']} = %(error)s, "
            f"{c['updated_at']} = %(now)s, {c['completed_at']} = %(now)s, "
            f"{c['lease_expires_at']} = NULL, {c['expires_at']} = %(expires_at)s "
            f"WHERE {owned} AND {owners}"
        )
        self.release = Statement.build(f"DELETE FROM {table} WHERE {owned} AND {owners}")
        self.extend = Statement.build(
            f"UPDATE {table} SET {c['lease_expires_at']} = %(lease_expires_at)s, "
            f"{c['updated_at']} = %(now)s WHERE {owned} AND {c['status']} = %(in_progress)s"
        )
        self.force_release = Statement.build(f"DELETE FROM {table} WHERE {where_key}")
        unchanged = f"DELETE FROM {table} WHERE {owned} AND {c['status']} = %(status)s"
        self.release_if_unchanged = Statement.build(unchanged)
        self.release_if_unchanged_unless_live = Statement.build(
            f"{unchanged} AND NOT ({c['status']} = %(in_progress)s "
            f"AND {c['lease_expires_at']} IS NOT NULL AND {c['lease_expires_at']} > %(now)s)"
        )

    @staticmethod
    def _add_duplicates_template(
        vendor: str, table: str, c: dict[str, str], conn: BaseDatabaseWrapper
    ) -> tuple[str, str, str]:
        """(head, one row of values, tail) of the statement adding buffered counts."""
        dups, last = c["duplicates_blocked"], c["last_duplicate_at"]
        on = (
            f"{table}.{c['scope']} = v.scope AND {table}.{c['key']} = v.k "
            f"AND {table}.{c['created_at']} = v.created"
        )
        latest = f"CASE WHEN {table}.{last} IS NULL OR {table}.{last} < v.at THEN v.at ELSE {table}.{last} END"
        if vendor == "mysql":
            # A derived table of SELECTs: MariaDB's VALUES constructor cannot name columns.
            return (
                f"UPDATE {table} JOIN (",
                "SELECT %(scope)s AS scope, %(key)s AS k, %(created)s AS created, "
                "%(count)s AS n, %(at)s AS at",
                f") AS v ON {on} SET {table}.{last} = {latest}, "
                f"{table}.{dups} = {table}.{dups} + v.n",
            )
        if vendor == "postgresql":
            from ..models import IdempotencyRecord

            time_type = IdempotencyRecord._meta.get_field("created_at").db_type(conn)
            values = (
                f"(%(scope)s, %(key)s, CAST(%(created)s AS {time_type}), "
                f"CAST(%(count)s AS bigint), CAST(%(at)s AS {time_type}))"
            )
        else:
            values = "(%(scope)s, %(key)s, %(created)s, %(count)s, %(at)s)"
        return (
            "WITH v (scope, k, created, n, at) AS (VALUES ",
            values,
            f") UPDATE {table} SET {dups} = {table}.{dups} + v.n, {last} = {latest} "
            f"FROM v WHERE {on}",
        )

    def add_duplicates(self, count: int) -> Statement:
        """Add ``count`` buffered counts in one statement; row ``i``'s parameters are
        named with the suffix ``_i`` (``scope_0``, ``key_0``, ``created_0``, ``count_0``,
        ``at_0``). A record that is gone, or was claimed afresh since, is left alone."""
        statement = self._dup_statements.get(count)
        if statement is None:
            head, row, tail = self._dup_parts
            joiner = " UNION ALL " if head.startswith("UPDATE") else ", "
            rows = joiner.join(_suffixed(row, i) for i in range(count))
            statement = self._dup_statements[count] = Statement.build(head + rows + tail)
        return statement

    def select_many(self, count: int) -> Statement:
        """Read ``count`` records at once; the parameters of key ``i`` named ``scope_i``,
        ``key_i``."""
        keys = " OR ".join(f"({_suffixed(self._where_key, i)})" for i in range(count))
        return Statement.build(self._select_many + keys)

    def claim_many(self, count: int) -> Statement:
        """The claim of ``count`` keys in one statement (``returning`` databases only).

        Row ``i`` takes its values from the parameters named with the suffix ``_i``
        (``scope_0``, ``key_0``, ... ``in_progress_0``): see :func:`row_params`.
        """
        statement = self._claim_many.get(count)
        if statement is None:
            head, row, conflict = self._many
            rows = ", ".join(_suffixed(row, i) for i in range(count))
            statement = self._claim_many[count] = Statement.build(head + rows + conflict)
        return statement


def _suffixed(template: str, index: int) -> str:
    """``template`` with each parameter ``%(name)s`` renamed ``%(name_<index>)s``."""
    return _PLACEHOLDER.sub(lambda match: f"%({match.group(1)}_{index})s", template)


def row_params(values: Params, index: int) -> dict[str, Any]:
    """The parameters of row ``index`` of :meth:`Statements.claim_many`."""
    named = {**_CONSTANTS, **values}
    return {f"{name}_{index}": value for name, value in named.items()}
