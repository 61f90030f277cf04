"""The change list of "Sent intents", minus what would read a big table whole.

- the paginator counts at most ``COUNT_CAP`` rows and shows the planner's estimate
  above that (:class:`EstimatedCountPaginator`);
- the page loads no result, error or metadata;
- the date drill-down finds its years, months and days one index probe each, where
  Django's own runs ``SELECT DISTINCT`` over a truncated date;
- a parameter no record can match (text with a NUL, which PostgreSQL refuses with an
  error) lists nothing instead of failing.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db.models import Max, Min, QuerySet
from django.http import HttpRequest
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from ..managers import COUNT_CAP, Count, count_rows
from .filters import has_nul

# Fields the list never shows: a page of 100 records should not fetch 100 results.
LIST_DEFERRED = ("result", "error", "metadata", "fingerprint")

if TYPE_CHECKING:
    _Paginator = Paginator[Any]
else:  # Paginator is generic only for type checkers
    _Paginator = Paginator


class EstimatedCountPaginator(_Paginator):
    """A paginator that counts at most ``cap`` rows and estimates beyond.

    ``counted`` is the :class:`~django_onceonly.managers.Count` (its ``exact`` flag
    tells the template to say "about"). The admin sets ``cap`` from its ``count_cap``.
    """

    cap: int | None = COUNT_CAP

    @cached_property
    def counted(self) -> Count:
        return count_rows(cast("QuerySet[Any]", self.object_list), cap=self.cap)

    @cached_property
    def count(self) -> int:
        return self.counted.value

    @property
    def cap_label(self) -> str:
        """The cap as the page shows it ("10,000")."""
        return formats.number_format(self.cap or 0, force_grouping=True)


def matches_nothing(request: HttpRequest) -> bool:
    """True when a filter or the search holds text that no record can hold."""
    return any(has_nul(value) for _, values in request.GET.lists() for value in values)


def _aware(value: dt.datetime) -> dt.datetime:
    return timezone.make_aware(value) if settings.USE_TZ else value


def local_time(value: dt.datetime) -> dt.datetime:
    return timezone.localtime(value) if timezone.is_aware(value) else value


def _next_bucket(start: dt.datetime, unit: str) -> dt.datetime:
    if unit == "year":
        return start.replace(year=start.year + 1)
    if unit == "month":
        return (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
    return start + dt.timedelta(days=1)


def _truncate(value: dt.datetime, unit: str) -> dt.datetime:
    value = value.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if unit == "year":
        return value.replace(month=1, day=1)
    if unit == "month":
        return value.replace(day=1)
    return value


class RecordChangeList(ChangeList):
    """The change list, minus the two things that read a big table whole."""

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        # Decided before Django's __init__, which builds the queryset.
        self.matches_nothing = matches_nothing(request)
        super().__init__(request, *args, **kwargs)

    def get_filters_params(self, params: Any = None) -> Any:
        lookup_params = super().get_filters_params(params)
        if self.matches_nothing and self.date_hierarchy:
            # Django reads the drill-down's year, month and day as numbers and refuses
            # the whole page over one that is not; the list is empty anyway.
            prefix = f"{self.date_hierarchy}__"
            for name in [name for name in lookup_params if name.startswith(prefix)]:
                del lookup_params[name]
        return lookup_params

    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any) -> QuerySet[Any]:
        queryset: QuerySet[Any] = super().get_queryset(request, *args, **kwargs)
        if self.matches_nothing:
            # Applied last, so that no filter's condition with a NUL reaches the database.
            return queryset.none()
        return queryset.defer(*LIST_DEFERRED)

    def _buckets(self, unit: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        """The non-empty years, months or days in ``[start, end)``, one index probe each."""
        field_name = str(self.date_hierarchy)
        found: list[dt.datetime] = []
        cursor = start
        while cursor < end:
            first = (
                self.queryset.filter(**{f"{field_name}__gte": cursor, f"{field_name}__lt": end})
                .order_by()
                .aggregate(first=Min(field_name))["first"]
            )
            if first is None:
                break
            bucket = _truncate(local_time(first), unit)
            found.append(bucket)
            cursor = _aware(_next_bucket(bucket, unit))
        return found

    def date_hierarchy_context(self) -> dict[str, Any]:
        """What ``admin/date_hierarchy.html`` needs, as Django's tag builds it.

        Django's own tag lists the years, months or days with ``SELECT DISTINCT`` of a
        truncated date, which reads every row of the level shown; this walks the index.
        """
        if self.matches_nothing:
            return {"show": False}
        field_name = str(self.date_hierarchy)
        year_field, month_field, day_field = (
            f"{field_name}__year",
            f"{field_name}__month",
            f"{field_name}__day",
        )
        year = self.params.get(year_field)
        month = self.params.get(month_field)
        day = self.params.get(day_field)

        def link(filters: dict[str, Any]) -> str:
            return str(self.get_query_string(filters, [f"{field_name}__"]))

        if not year:
            # A month or day without a year is an ordinary filter; drill down from the top.
            bounds = self.queryset.order_by().aggregate(first=Min(field_name), last=Max(field_name))
            if bounds["first"] is None:
                return {"show": False}
            first, last = local_time(bounds["first"]), local_time(bounds["last"])
            if first.year != last.year:
                start = _truncate(first, "year")
                end = _next_bucket(_truncate(last, "year"), "year")
                years = self._buckets("year", _aware(start), _aware(end))
                return {
                    "show": True,
                    "back": None,
                    "choices": [
                        {"link": link({year_field: str(y.year)}), "title": str(y.year)}
                        for y in years
                    ],
                }
            year = first.year
            if first.month == last.month:
                month = first.month
        try:
            if year and month and day:
                chosen = dt.date(int(year), int(month), int(day))
                return {
                    "show": True,
                    "back": {
                        "link": link({year_field: year, month_field: month}),
                        "title": capfirst(formats.date_format(chosen, "YEAR_MONTH_FORMAT")),
                    },
                    "choices": [
                        {"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}
                    ],
                }
            if year and month:
                start = dt.datetime(int(year), int(month), 1)
                days = self._buckets("day", _aware(start), _aware(_next_bucket(start, "month")))
                return {
                    "show": True,
                    "back": {"link": link({year_field: year}), "title": str(year)},
                    "choices": [
                        {
                            "link": link({year_field: year, month_field: month, day_field: d.day}),
                            "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT")),
                        }
                        for d in days
                    ],
                }
            if year:
                start = dt.datetime(int(year), 1, 1)
                months = self._buckets("month", _aware(start), _aware(_next_bucket(start, "year")))
                return {
                    "show": True,
                    "back": {"link": link({}), "title": _("All dates")},
                    "choices": [
                        {
                            "link": link({year_field: year, month_field: m.month}),
                            "title": capfirst(formats.date_format(m, "YEAR_MONTH_FORMAT")),
                        }
                        for m in months
                    ],
                }
        except (ValueError, OverflowError):
            pass
        return {"show": False}
