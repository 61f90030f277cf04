"""Queries that several callers share: the admin, the stats, the commands and the purge.

They live on the models' querysets (``IdempotencyRecord.objects``,
``OutboxMessage.objects``), as
django-celery-results keeps its own in ``managers.py``, so that each is written once.
Every query here is meant to stay cheap on a table of millions of rows:

- counts are bounded (:meth:`~IdempotencyRecordQuerySet.count_bounded`: exact up to
  :data:`COUNT_CAP`, the query planner's estimate above it);
- column values are listed by an index skip-scan
  (:meth:`~IdempotencyRecordQuerySet.distinct_values`), never ``SELECT DISTINCT``;
- writes that must hold only under a condition (the purge, a release by hand) are one
  conditional ``DELETE`` each, never Django's ``QuerySet.delete()``: as soon as any
  ``pre_delete`` or ``post_delete`` receiver exists, for any model, that selects the
  rows first and then deletes them by primary key, and the condition no longer holds
  at the moment of the delete.

This module sits beside the model, at the bottom of the package: it imports only
:mod:`django_onceonly.rules` and Django.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connections, models
from django.db.models import Count as CountAggregate
from django.db.models import Q, QuerySet, Sum, Window
from django.utils import timezone

from .rules import Status

if TYPE_CHECKING:
    from .models import IdempotencyRecord, OutboxMessage  # noqa: F401 (named in strings below)

# Counting stops here; beyond it the number shown is the database's estimate.
COUNT_CAP = 10_000


@dataclass(frozen=True, slots=True)
class Count:
    """A row count that is either exact or the query planner's estimate."""

    value: int
    exact: bool = True

    def __str__(self) -> str:
        if self.exact:
            return f"{self.value:,}"
        return f"about {_round(self.value):,}"

    def __add__(self, other: Count) -> Count:
        return Count(self.value + other.value, self.exact and other.exact)


def _round(value: int) -> int:
    """Keep two significant digits: an estimate should not look precise."""
    if value < 100:
        return value
    magnitude = int(10 ** (len(str(value)) - 2))
    return round(value / magnitude) * magnitude


def planner_estimate(queryset: QuerySet[Any]) -> int | None:
    """The number of rows the database expects ``queryset`` to return, or ``None``.

    PostgreSQL answers from ``EXPLAIN`` (statistics kept by ``ANALYZE``/autovacuum);
    MySQL and MariaDB from their ``EXPLAIN`` row estimate; SQLite has none.
    """
    conn = connections[queryset.db]
    sql, params = queryset.order_by().query.get_compiler(using=queryset.db).as_sql()
    if conn.vendor == "postgresql":
        with conn.cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        return int(plan[0]["Plan"]["Plan Rows"])
    if conn.vendor == "mysql":
        with conn.cursor() as cursor:
            cursor.execute(f"EXPLAIN {sql}", params)
            columns = [column[0].lower() for column in cursor.description]
            row = dict(zip(columns, cursor.fetchone(), strict=True))
        if row.get("rows") is None:
            return None
        filtered = float(row.get("filtered") or 100.0)
        return int(int(row["rows"]) * filtered / 100.0)
    return None


def count_rows(queryset: QuerySet[Any], *, cap: int | None = COUNT_CAP) -> Count:
    """Count ``queryset`` exactly up to ``cap`` rows, and estimate above it.

    ``SELECT COUNT(*)`` of millions of rows reads them all; counting at most ``cap + 1``
    of them costs the same as showing a page. Where the database has no estimate
    (SQLite), or ``cap`` is ``None``, the count is exact whatever it costs.
    """
    queryset = queryset.order_by()
    if cap is None:
        return Count(queryset.count())
    bounded = queryset.values("pk")[: cap + 1].count()
    if bounded <= cap:
        return Count(bounded)
    estimate = planner_estimate(queryset)
    if estimate is None:
        return Count(queryset.count())
    return Count(max(estimate, cap + 1), exact=False)


def stuck_filter(now: dt.datetime) -> Q:
    """Claims whose lease has ended without an outcome: no attempt has come since.

    :func:`django_onceonly.rules.lease_is_stale` written as a filter.
    """
    return Q(status=Status.IN_PROGRESS, lease_expires_at__lte=now)


def running_filter(now: dt.datetime) -> Q:
    """Claims whose lease is live: :func:`django_onceonly.rules.lease_is_live` as a filter."""
    return Q(status=Status.IN_PROGRESS, lease_expires_at__gt=now)


class IdempotencyRecordQuerySet(models.QuerySet["IdempotencyRecord"]):
    """``IdempotencyRecord.objects``: the shared queries on the records table."""

    # -- which records ---------------------------------------------------------------

    def expired(self, now: dt.datetime | None = None) -> IdempotencyRecordQuerySet:
        """Records past their expiry: they count as absent and wait for the purge."""
        return self.filter(expires_at__lte=now or timezone.now())

    def stuck(self, now: dt.datetime | None = None) -> IdempotencyRecordQuerySet:
        """``in_progress`` records whose lease has ended without an outcome."""
        return self.filter(stuck_filter(now or timezone.now()))

    def running(self, now: dt.datetime | None = None) -> IdempotencyRecordQuerySet:
        """``in_progress`` records whose lease is live: an owner may be running them."""
        return self.filter(running_filter(now or timezone.now()))

    def needs_attention(self, now: dt.datetime | None = None) -> IdempotencyRecordQuerySet:
        """``unknown`` or stuck records: a person decides what becomes of them."""
        return self.filter(Q(status=Status.UNKNOWN) | stuck_filter(now or timezone.now()))

    # -- reading a big table cheaply -------------------------------------------------

    def count_bounded(self, cap: int | None = COUNT_CAP) -> Count:
        """:func:`count_rows` of this queryset."""
        return count_rows(self, cap=cap)

    def distinct_values(self, field_name: str, limit: int) -> list[str]:
        """The first ``limit`` distinct values of a column, in order, by an index skip-scan.

        A recursive query asks the index for the smallest value above the previous one,
        so it costs one index probe per value returned, however many rows share each
        value. ``SELECT DISTINCT`` would read the whole table. The column must lead an
        index. Filters on this queryset are not applied: it walks the whole table.
        """
        conn = connections[self.db]
        q = conn.ops.quote_name
        meta = self.model._meta
        table = q(meta.db_table)
        column = q(meta.get_field(field_name).column or field_name)  # type: ignore[union-attr]
        sql = (
            f"WITH RECURSIVE walk (value, depth) AS ("
            f"SELECT MIN({column}), 1 FROM {table} "
            f"UNION ALL "
            f"SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > walk.value), "
            f"walk.depth + 1 "
            f"FROM walk WHERE walk.value IS NOT NULL AND walk.depth < %s"
            f") SELECT value FROM walk WHERE value IS NOT NULL ORDER BY depth"
        )
        with conn.cursor() as cursor:
            cursor.execute(sql, [limit])
            return [str(row[0]) for row in cursor.fetchall()]

    def estimated_size(self) -> int | None:
        """The number of rows in the records table per the planner's statistics, or ``None``.

        PostgreSQL only (``pg_class.reltuples``, kept by ``VACUUM``/``ANALYZE`` and
        autovacuum: one catalogue row, whatever the table's size); ``None`` elsewhere and
        on a table never analysed.
        """
        conn = connections[self.db]
        if conn.vendor != "postgresql":
            return None
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                [conn.ops.quote_name(self.model._meta.db_table)],
            )
            row = cursor.fetchone()
        return int(row[0]) if row and row[0] >= 0 else None

    def recent_duplicates(
        self,
        since: dt.datetime,
        top: int,
        fields: tuple[str, ...],
        *,
        sample_percent: float | None = None,
        sample_seed: int = 0,
    ) -> tuple[int, int, list[tuple[Any, ...]]]:
        """Duplicates blocked by the records whose last duplicate came ``since``, how
        many records those are, and the ``fields`` of the ``top`` of them by duplicates
        blocked.

        No index serves ``last_duplicate_at``, on purpose: every blocked duplicate
        updates it, and an index on it would stop PostgreSQL from updating those rows in
        place (HOT), making each duplicate check slower. So this reads the table once,
        and asks for the totals and the top records in that one pass (window aggregates).

        With ``sample_percent`` (PostgreSQL only) it reads that share of the table's
        pages (``TABLESAMPLE SYSTEM``) instead: the totals are those of the sample scaled
        up to the whole table (estimates), the top records those of the sample. The same
        ``sample_seed`` on the same table reads the same pages (``REPEATABLE``): the
        figures hold still, and a second read finds the pages in the operating system's
        cache.
        """
        recent = self.filter(last_duplicate_at__gte=since, duplicates_blocked__gt=0)
        if sample_percent is not None:
            return self._sampled_duplicates(recent, top, fields, sample_percent, sample_seed)
        if top < 1:
            totals = recent.order_by().aggregate(
                duplicates=Sum("duplicates_blocked"), records=CountAggregate("pk")
            )
            return int(totals["duplicates"] or 0), int(totals["records"] or 0), []
        rows = list(
            recent.annotate(
                window_duplicates=Window(Sum("duplicates_blocked")),
                window_records=Window(CountAggregate("pk")),
            )
            .order_by("-duplicates_blocked", "-last_duplicate_at", "-pk")
            .values_list(*fields, "window_duplicates", "window_records")[:top]
        )
        if not rows:
            return 0, 0, []
        return int(rows[0][-2]), int(rows[0][-1]), [row[: len(fields)] for row in rows]

    def _sampled_duplicates(
        self,
        recent: IdempotencyRecordQuerySet,
        top: int,
        fields: tuple[str, ...],
        percent: float,
        seed: int,
    ) -> tuple[int, int, list[tuple[Any, ...]]]:
        conn = connections[self.db]
        if conn.vendor != "postgresql":
            raise ValueError("a sampled read needs PostgreSQL (TABLESAMPLE)")
        if not 0 < percent <= 100:
            raise ValueError("sample_percent must be in (0, 100]")
        rows = (
            recent.annotate(
                window_duplicates=Window(Sum("duplicates_blocked")),
                window_records=Window(CountAggregate("pk")),
            )
            .order_by("-duplicates_blocked", "-last_duplicate_at", "-pk")
            .values_list(*fields, "window_duplicates", "window_records")[: max(top, 1)]
        )
        sql, params = rows.query.sql_with_params()
        table = conn.ops.quote_name(self.model._meta.db_table)
        source = f"FROM {table}"
        if sql.count(source) != 1:  # never: one table, no join
            raise RuntimeError(f"cannot sample this query: {sql}")
        # Numbers of our own, not user input: written into the SQL as literals.
        sample = f"TABLESAMPLE SYSTEM ({float(percent)!r}) REPEATABLE ({int(seed)})"
        sql = sql.replace(source, f"{source} {sample}")
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            found = cursor.fetchall()
        if not found:
            return 0, 0, []
        scale = 100.0 / percent
        lines = [row[: len(fields)] for row in found] if top >= 1 else []
        return round(int(found[0][-2]) * scale), round(int(found[0][-1]) * scale), lines

    # -- conditional deletes ---------------------------------------------------------

    def purge_expired(self, *, batch_size: int = 1000, dry_run: bool = False) -> int:
        """Delete expired records in batches of ``batch_size``; return how many.

        "Now" is fixed when the purge starts. Each batch selects up to ``batch_size``
        expired ids (the expiry index serves it), then deletes them with one
        ``DELETE ... WHERE id IN (...) AND expires_at <= now``: a record that a claim took
        over between the two statements is no longer expired and is kept. The delete
        sends no ``pre_delete``/``post_delete`` signals (see the module's docstring).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        now = timezone.now()
        if dry_run:
            return self.expired(now).count()
        deleted = 0
        while True:
            ids = list(
                self.expired(now).order_by("expires_at").values_list("pk", flat=True)[:batch_size]
            )
            if not ids:
                return deleted
            deleted += self._delete_where(
                f"{{id}} IN ({', '.join(['%s'] * len(ids))}) AND {{expires_at}} <= %s",
                [*ids, self._db_datetime(now)],
            )
            if len(ids) < batch_size:
                return deleted

    def delete_if_unchanged(
        self, pk: int, *, owner_token: str, status: str, allow_live: bool, now: dt.datetime
    ) -> bool:
        """Delete the row ``pk`` only if it still has this owner token and status; return whether.

        Unless ``allow_live``, a row whose lease is live at ``now`` is kept too. One
        conditional ``DELETE``: a claim, a finish or an extend landing at the same
        moment either happens before it (and the row is kept) or after it.
        """
        where = "{id} = %s AND {owner_token} = %s AND {status} = %s"
        params: list[Any] = [pk, owner_token, status]
        if not allow_live:
            where += (
                " AND NOT ({status} = %s AND {lease_expires_at} IS NOT NULL"
                " AND {lease_expires_at} > %s)"
            )
            params += [Status.IN_PROGRESS.value, self._db_datetime(now)]
        return self._delete_where(where, params) == 1

    def _db_datetime(self, value: dt.datetime) -> Any:
        return connections[self.db].ops.adapt_datetimefield_value(value)

    def _delete_where(self, where: str, params: list[Any]) -> int:
        """``DELETE FROM <table> WHERE <where>``; ``{field}`` in ``where`` names a column.

        The filters of this queryset are not applied, only its database.
        """
        conn = connections[self.db]
        q = conn.ops.quote_name
        meta = self.model._meta
        columns = {
            field.name: q(field.column or field.name)
            for field in meta.concrete_fields
            if field.name in ("id", "owner_token", "status", "lease_expires_at", "expires_at")
        }
        sql = f"DELETE FROM {q(meta.db_table)} WHERE {where.format(**columns)}"
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.rowcount)


class OutboxMessageQuerySet(models.QuerySet["OutboxMessage"]):
    """Queries on the outbox that the relay, the purge, the stats and the admin share."""

    def pending(self) -> OutboxMessageQuerySet:
        """Messages written by a committed transaction and not yet published."""
        return self.filter(published_at__isnull=True)

    def published(self) -> OutboxMessageQuerySet:
        return self.filter(published_at__isnull=False)

    def older_than(self, seconds: float, now: dt.datetime | None = None) -> OutboxMessageQuerySet:
        """Pending messages written more than ``seconds`` ago: what an alert looks at.

        A few such rows mean a broker outage the relay is waiting out; a growing number
        means no relay is running.
        """
        now = now or timezone.now()
        return self.pending().filter(created_at__lte=now - dt.timedelta(seconds=seconds))

    def purge_published(
        self, *, older_than: float = 0.0, batch_size: int = 1000, dry_run: bool = False
    ) -> int:
        """Delete published messages (published more than ``older_than`` seconds ago).

        In batches of ``batch_size``, each one short ``DELETE ... WHERE id IN (...)``,
        as :meth:`IdempotencyRecordQuerySet.purge_expired` does. Pending messages are
        never deleted.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        cutoff = timezone.now() - dt.timedelta(seconds=older_than)
        done = self.filter(published_at__lte=cutoff)
        if dry_run:
            return done.count()
        deleted = 0
        while True:
            ids = list(done.order_by("published_at").values_list("pk", flat=True)[:batch_size])
            if not ids:
                return deleted
            count, _ = self.filter(pk__in=ids, published_at__isnull=False).delete()
            deleted += count
            if len(ids) < batch_size:
                return deleted
