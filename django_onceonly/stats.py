"""The operator's summary of the records table, shared by the admin and ``onceonly_stats``.

Every query here is meant to stay cheap on a table of millions of rows: counts are
bounded (exact up to ``COUNT_CAP``, the planner's estimate above it), lists are short
and read through an index, and nothing groups or sorts the whole table.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any

from django.utils import timezone

from .conf import conf
from .managers import (
    COUNT_CAP,
    Count,
    IdempotencyRecordQuerySet,
    count_rows,
    planner_estimate,
    stuck_filter,
)
from .models import IdempotencyRecord
from .rules import Status

# Re-exported: they lived here before the queries moved to managers.py.
__all__ = [
    "COUNT_CAP",
    "DUPLICATES_WINDOW",
    "SUMMARY_SCAN_LIMIT",
    "Count",
    "RecordLine",
    "Summary",
    "count_rows",
    "planner_estimate",
    "stuck_filter",
    "summarize",
]

DUPLICATES_WINDOW = dt.timedelta(hours=24)
# The admin's summary reads at most about this many rows for its duplicates figures (a
# sample of the pages of a larger PostgreSQL table): about 100 ms of reading here.
SUMMARY_SCAN_LIMIT = 500_000


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
    # Counts are exact up to this many rows (``None``: every count is exact).
    cap: int | None = COUNT_CAP
    # The share of the table (percent of its pages) the duplicates figures were read
    # from; ``None``: the whole table, and they are exact.
    sample_percent: float | None = None

    @property
    def duplicates_count(self) -> Count:
        """``duplicates_in_window`` as a :class:`Count` (an estimate from a sample)."""
        return Count(self.duplicates_in_window, exact=self.sample_percent is None)

    @property
    def records_with_duplicates_count(self) -> Count:
        return Count(self.records_with_duplicates_in_window, exact=self.sample_percent is None)

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
            "duplicates_sample_percent": self.sample_percent,
            "top_keys": [line.as_dict() for line in self.top_keys],
            "needs_attention": [line.as_dict() for line in self.needs_attention],
        }


# The columns a RecordLine is read from, by name.
LINE_FIELDS = tuple(line_field.name for line_field in fields(RecordLine))


def _lines(rows: list[tuple[Any, ...]]) -> list[RecordLine]:
    return [RecordLine(*row) for row in rows]


def summarize(
    *,
    using: str | None = None,
    now: dt.datetime | None = None,
    window: dt.timedelta = DUPLICATES_WINDOW,
    top: int = 10,
    cap: int | None = COUNT_CAP,
    scan_limit: int | None = None,
) -> Summary:
    """Summarise the records of ``using`` (default ``ONCEONLY_DATABASE``).

    ``cap=None`` counts exactly, which reads every row of a large table.

    The duplicates figures read the whole table (no index serves them, see
    :meth:`~django_onceonly.managers.IdempotencyRecordQuerySet.recent_duplicates`).
    With ``scan_limit``, on PostgreSQL, a table the planner estimates at more rows than
    that is sampled instead: about ``scan_limit`` rows' worth of its pages are read, the
    totals are estimates scaled up from them, and the top keys are the sample's
    (``Summary.sample_percent`` says how much was read).
    """
    alias = using or conf.ONCEONLY_DATABASE
    now = now or timezone.now()
    records: IdempotencyRecordQuerySet = IdempotencyRecord.objects.using(alias)
    by_status = {
        status.value: records.filter(status=status).count_bounded(cap) for status in Status
    }
    sample_percent = None
    if scan_limit is not None:
        size = records.estimated_size()
        if size is not None and size > scan_limit:
            sample_percent = max(100.0 * scan_limit / size, 0.01)
    duplicates, with_duplicates, top_keys = records.recent_duplicates(
        now - window,
        top,
        LINE_FIELDS,
        sample_percent=sample_percent,
        # The same pages for an hour: the figures hold still between two looks, and a
        # second look finds the pages cached; the next hour samples other pages.
        sample_seed=int(now.timestamp() // 3600),
    )
    attention = records.needs_attention(now).order_by("-created_at")
    return Summary(
        database=alias,
        now=now,
        window=window,
        by_status=by_status,
        stuck=records.stuck(now).count_bounded(cap),
        expired=records.expired(now).count_bounded(cap),
        duplicates_in_window=duplicates,
        records_with_duplicates_in_window=with_duplicates,
        top_keys=_lines(top_keys),
        needs_attention=_lines(list(attention.values_list(*LINE_FIELDS)[:top])),
        cap=cap,
        sample_percent=sample_percent,
    )
