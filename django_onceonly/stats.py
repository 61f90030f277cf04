"""The operator's summary of the records table, shared by the admin and ``onceonly_stats``.

Every query here is meant to stay cheap on a table of millions of rows: counts are
bounded (exact up to ``COUNT_CAP``, the planner's estimate above it), lists are short
and read through an index, and nothing groups or sorts the whole table.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import connections
from django.db.models import Count as CountAggregate
from django.db.models import Q, QuerySet, Sum, Window
from django.utils import timezone

from .conf import conf
from .models import IdempotencyRecord, Status

# Counting stops here; beyond it the number shown is the database's estimate.
COUNT_CAP = 10_000
DUPLICATES_WINDOW = dt.timedelta(hours=24)


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


@dataclass(frozen=True, slots=True)
class RecordLine:
    """One record as the summary lists it."""

    pk: int
    scope: str
    key: str
    status: str
    duplicates_blocked: int
    last_duplicate_at: dt.datetime | None
    created_at: dt.datetime
    lease_expires_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "scope": self.scope,
            "key": self.key,
            "status": self.status,
            "duplicates_blocked": self.duplicates_blocked,
            "last_duplicate_at": _iso(self.last_duplicate_at),
            "created_at": _iso(self.created_at),
            "lease_expires_at": _iso(self.lease_expires_at),
        }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True, slots=True)
class Summary:
    """What an operator wants to see first. Build it with :func:`summarize`.

    ``duplicates_in_window`` is the sum of ``duplicates_blocked`` over the records whose
    last duplicate came within ``window`` of ``now``: every duplicate that blocked on a
    recently hammered key, including the ones before the window on those same keys. The
    table keeps a counter per record, not one row per duplicate, so this is an upper
    bound of the duplicates blocked in the window, exact when each of those records
    only blocked duplicates inside it.
    """

    database: str
    now: dt.datetime
    window: dt.timedelta
    by_status: dict[str, Count]
    stuck: Count
    expired: Count
    duplicates_in_window: int
    records_with_duplicates_in_window: int
    top_keys: list[RecordLine] = field(default_factory=list)
    needs_attention: list[RecordLine] = field(default_factory=list)

    @property
    def total(self) -> Count:
        total = Count(0)
        for count in self.by_status.values():
            total = total + count
        return total

    @property
    def exact(self) -> bool:
        return all(count.exact for count in (*self.by_status.values(), self.stuck, self.expired))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (``onceonly_stats --json``)."""

        def count(value: Count) -> dict[str, Any]:
            return {"value": value.value, "exact": value.exact}

        return {
            "database": self.database,
            "now": self.now.isoformat(),
            "window_seconds": int(self.window.total_seconds()),
            "by_status": {status: count(value) for status, value in self.by_status.items()},
            "total": count(self.total),
            "stuck_in_progress": count(self.stuck),
            "expired_awaiting_purge": count(self.expired),
            "duplicates_in_window": self.duplicates_in_window,
            "records_with_duplicates_in_window": self.records_with_duplicates_in_window,
            "top_keys": [line.as_dict() for line in self.top_keys],
            "needs_attention": [line.as_dict() for line in self.needs_attention],
        }


LINE_FIELDS = (
    "pk",
    "scope",
    "key",
    "status",
    "duplicates_blocked",
    "last_duplicate_at",
    "created_at",
    "lease_expires_at",
)


def _lines(queryset: QuerySet[IdempotencyRecord]) -> list[RecordLine]:
    rows: Iterable[tuple[Any, ...]] = queryset.values_list(*LINE_FIELDS)
    return [RecordLine(*row) for row in rows]


def _recent_duplicates(
    records: QuerySet[IdempotencyRecord], since: dt.datetime, top: int
) -> tuple[int, int, list[RecordLine]]:
    """Duplicates blocked by the records whose last duplicate came ``since``, how many
    records those are, and the ``top`` of them by duplicates blocked.

    No index serves ``last_duplicate_at``, on purpose: every blocked duplicate updates
    it, and an index on it would stop PostgreSQL from updating those rows in place
    (HOT), making each duplicate check slower. So this reads the table once, and asks
    for the totals and the top records in that one pass (window aggregates).
    """
    recent = records.filter(last_duplicate_at__gte=since, duplicates_blocked__gt=0)
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
        .values_list(*LINE_FIELDS, "window_duplicates", "window_records")[:top]
    )
    if not rows:
        return 0, 0, []
    lines = [RecordLine(*row[: len(LINE_FIELDS)]) for row in rows]
    return int(rows[0][-2]), int(rows[0][-1]), lines


def stuck_filter(now: dt.datetime) -> Q:
    """Claims whose lease has ended without an outcome: no attempt has come since."""
    return Q(status=Status.IN_PROGRESS, lease_expires_at__lte=now)


def summarize(
    *,
    using: str | None = None,
    now: dt.datetime | None = None,
    window: dt.timedelta = DUPLICATES_WINDOW,
    top: int = 10,
    cap: int | None = COUNT_CAP,
) -> Summary:
    """Summarise the records of ``using`` (default ``ONCEONLY_DATABASE``).

    ``cap=None`` counts exactly, which reads every row of a large table.
    """
    alias = using or conf.ONCEONLY_DATABASE
    now = now or timezone.now()
    records = IdempotencyRecord.objects.using(alias)
    by_status = {
        status.value: count_rows(records.filter(status=status), cap=cap) for status in Status
    }
    duplicates, with_duplicates, top_keys = _recent_duplicates(records, now - window, top)
    attention = records.filter(Q(status=Status.UNKNOWN) | stuck_filter(now))
    return Summary(
        database=alias,
        now=now,
        window=window,
        by_status=by_status,
        stuck=count_rows(records.filter(stuck_filter(now)), cap=cap),
        expired=count_rows(records.expired(now), cap=cap),
        duplicates_in_window=duplicates,
        records_with_duplicates_in_window=with_duplicates,
        top_keys=top_keys,
        needs_attention=_lines(attention.order_by("-created_at")[:top]),
    )
