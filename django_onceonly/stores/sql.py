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
from .base import RECORD_FIELDS

# Statements name every column and every parameter; nothing depends on the order of
# Record's fields (a test writes a distinct value into each and reads them back).
COLUMNS = RECORD_FIELDS
JSON_COLUMNS = frozenset({"result", "metadata"})

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
            if name in JSON_COLUMNS and vendor == "postgresql":
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
        insert = (
            f"INSERT INTO {table} ({', '.join(c[name] for name in COLUMNS)}) "
            f"VALUES ({', '.join(inserted[name] for name in COLUMNS)})"
        )
        if vendor == "mysql":
            stale = (
                f"({c['expires_at']} IS NOT NULL AND {c['expires_at']} <= VALUES({c['created_at']})) "
                f"OR ({c['status']} = VALUES({c['status']}) "
                f"AND {c['lease_expires_at']} <= VALUES({c['created_at']}))"
            )
            claim = (
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
            claim = (
                f"{insert} ON CONFLICT ({c['scope']}, {c['key']}) DO UPDATE SET "
                f"{c['duplicates_blocked']} = CASE WHEN {stale} THEN {t}.{c['duplicates_blocked']} "
                f"ELSE {t}.{c['duplicates_blocked']} + 1 END, "
                f"{c['last_duplicate_at']} = CASE WHEN {stale} THEN {t}.{c['last_duplicate_at']} "
                f"ELSE excluded.{c['created_at']} END"
            )
        if self.returning:
            claim += f" RETURNING {selected}"
        self.claim = Statement.build(claim)
        # A claim that finds the key taken writes nothing that matters (a counter and a
        # time), yet in autocommit its commit would wait for the WAL flush like a real
        # claim: on PostgreSQL that wait is most of a duplicate check's cost. Such a claim
        # commits asynchronously instead (only that statement's own transaction; a server
        # crash may lose the last few counts, never a claim). Not when the statement runs
        # in the caller's transaction: that would make the caller's commit asynchronous.
        self.claim_autocommit: Statement | None = None
        if vendor == "postgresql":
            self.claim_autocommit = Statement.build(
                f"{claim}, CASE WHEN {table}.{c['owner_token']} <> %(token)s "
                "THEN set_config('synchronous_commit', 'off', true) END"
            )
        where_key = f"{c['scope']} = %(scope)s AND {c['key']} = %(key)s"
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
