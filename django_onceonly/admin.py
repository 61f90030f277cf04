"""The "Sent intents" admin: an audit view of the records, and the way to release one.

Built to stay usable with millions of rows (see ``docs/admin.md``):

- no ``COUNT(*)`` of the table: the paginator counts at most ``COUNT_CAP`` rows and
  shows the planner's estimate above that, and ``show_full_result_count`` is off;
- search is a case-sensitive "starts with" on the key, which an index answers,
  instead of Django's default ``icontains`` that reads every row;
- the task and scope filters list their values with an index skip-scan (one probe per
  value, at most ``VALUES_LIMIT``), never ``SELECT DISTINCT`` over the table;
- the date drill-down finds its years, months and days the same way;
- the list sorts only by creation time, the one order an index serves.

Records are written by locks only. The admin shows them read-only, cannot add or
delete them, and offers one write: **Release**, a conditional delete of exactly the
version the person confirmed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.options import get_content_type_for_model
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.admin.views.main import PAGE_VAR, ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Max, Min, QuerySet
from django.db.models.functions import Left
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.module_loading import import_string
from django.utils.safestring import SafeString
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .conf import conf
from .models import IdempotencyRecord, Status
from .stats import Count, count_rows, stuck_filter, summarize
from .stores import get_store
from .stores.base import IN_PROGRESS
from .stores.database import DatabaseStore

logger = logging.getLogger("django_onceonly")

# How many distinct tasks or scopes a filter lists before it offers a text box instead.
VALUES_LIMIT = 30
# How many records one release may touch: one page of the list.
MAX_RELEASE = 100
# Fields the list never shows: a page of 100 records should not fetch 100 results.
LIST_DEFERRED = ("result", "error", "metadata", "fingerprint")
STATUS_CLASSES = {status.value: status.value.replace("_", "-") for status in Status}


# -- counting and listing values without reading the table -----------------------------


if TYPE_CHECKING:
    _Paginator = Paginator[Any]
else:  # Paginator is generic only for type checkers
    _Paginator = Paginator


class EstimatedCountPaginator(_Paginator):
    """A paginator that counts at most ``COUNT_CAP`` rows and estimates beyond.

    ``counted`` is the :class:`~django_onceonly.stats.Count` (its ``exact`` flag tells
    the template to say "about").
    """

    @cached_property
    def counted(self) -> Count:
        return count_rows(cast("QuerySet[Any]", self.object_list))

    @cached_property
    def count(self) -> int:
        return self.counted.value


def distinct_values(using: str, field_name: str, limit: int) -> list[str]:
    """The first ``limit`` distinct values of a column, in order, by an index skip-scan.

    A recursive query asks the index for the smallest value above the previous one, so
    it costs one index probe per value returned, however many rows share each value.
    ``SELECT DISTINCT`` would read the whole table. The column must lead an index.
    """
    conn = connections[using]
    q = conn.ops.quote_name
    meta = IdempotencyRecord._meta
    table = q(meta.db_table)
    column = q(meta.get_field(field_name).column or field_name)  # type: ignore[union-attr]
    sql = (
        f"WITH RECURSIVE walk (value, depth) AS ("
        f"SELECT MIN({column}), 1 FROM {table} "
        f"UNION ALL "
        f"SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > walk.value), walk.depth + 1 "
        f"FROM walk WHERE walk.value IS NOT NULL AND walk.depth < %s"
        f") SELECT value FROM walk WHERE value IS NOT NULL ORDER BY depth"
    )
    with conn.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [str(row[0]) for row in cursor.fetchall()]


class ColumnValueFilter(admin.SimpleListFilter):
    """Choices are the column's values found by :func:`distinct_values`.

    When there are more than ``VALUES_LIMIT`` of them the filter lists the first ones
    and adds a box to type any other value (an exact match, served by the index).
    """

    field_name = ""
    template = "admin/django_onceonly/column_filter.html"
    empty_label = _("(empty)")

    def __init__(
        self,
        request: HttpRequest,
        params: dict[str, Any],
        model: type[Any],
        model_admin: admin.ModelAdmin[Any],
    ) -> None:
        self.more = False
        # The text box submits a GET form: it must carry the other filters along.
        self.other_params = [
            (name, value)
            for name, values in request.GET.lists()
            for value in values
            if name not in (self.parameter_name, PAGE_VAR)
        ]
        super().__init__(request, params, model, model_admin)

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        using = model_admin.get_queryset(request).db
        values = distinct_values(using, self.field_name, VALUES_LIMIT + 1)
        self.more = len(values) > VALUES_LIMIT
        values = values[:VALUES_LIMIT]
        current = self.value()
        if current is not None and current not in values:
            values.append(current)
        return [(value, value or str(self.empty_label)) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(**{self.field_name: value})


class TaskFilter(ColumnValueFilter):
    title = _("task")
    parameter_name = "task_name"
    field_name = "task_name"
    empty_label = _("(no task)")


class ScopeFilter(ColumnValueFilter):
    title = _("scope")
    parameter_name = "scope"
    field_name = "scope"
    empty_label = _("(empty scope)")


class ConditionFilter(admin.SimpleListFilter):
    """States that the status alone does not tell: leases, expiry."""

    title = _("condition")
    parameter_name = "condition"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, Any]]:
        return [
            ("stuck", _("stuck: in progress, lease ended")),
            ("running", _("running: lease live")),
            ("expired", _("expired, awaiting purge")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        value = self.value()
        if value == "stuck":
            return queryset.filter(stuck_filter(now))
        if value == "running":
            return queryset.filter(status=Status.IN_PROGRESS, lease_expires_at__gt=now)
        if value == "expired":
            return queryset.filter(expires_at__lte=now)
        return queryset


# -- the change list -------------------------------------------------------------------


def _aware(value: dt.datetime) -> dt.datetime:
    return timezone.make_aware(value) if settings.USE_TZ else value


def _local(value: dt.datetime) -> dt.datetime:
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

    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any) -> QuerySet[Any]:
        queryset: QuerySet[Any] = super().get_queryset(request, *args, **kwargs)
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
            bucket = _truncate(_local(first), unit)
            found.append(bucket)
            cursor = _aware(_next_bucket(bucket, unit))
        return found

    def date_hierarchy_context(self) -> dict[str, Any]:
        """What ``admin/date_hierarchy.html`` needs, as Django's tag builds it.

        Django's own tag lists the years, months or days with ``SELECT DISTINCT`` of a
        truncated date, which reads every row of the level shown; this walks the index.
        """
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
            first, last = _local(bounds["first"]), _local(bounds["last"])
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


# -- releasing -------------------------------------------------------------------------


def lease_is_live(record: IdempotencyRecord, now: dt.datetime) -> bool:
    """True when an owner may be running this intent right now."""
    return (
        record.status == Status.IN_PROGRESS
        and record.lease_expires_at is not None
        and record.lease_expires_at > now
    )


def release_if_unchanged(
    *,
    using: str,
    record: IdempotencyRecord,
    owner_token: str,
    status: str,
    allow_live: bool,
    now: dt.datetime,
) -> bool:
    """Release ``record`` only if it is still the version the person saw; return whether.

    "The version seen" is the owner token and the status shown on the confirmation
    page: a claim that took the key over, an owner that finished it, or another release
    in between makes this release nothing. Unless ``allow_live``, a record whose lease
    is live at ``now`` is left alone too, even if it was shown that way.

    With the database store this is one conditional ``DELETE``. With another store
    (``RedisStore``, whose records this table copies for the audit trail) the store's
    own record is compared, then released with ``force_release``; the check and the
    release are two steps there, so a claim landing between them, within milliseconds,
    would be released too.
    """
    store = get_store()
    if isinstance(store, DatabaseStore) and store.alias == using:
        return _delete_row_if_unchanged(
            using=using,
            pk=record.pk,
            owner_token=owner_token,
            status=status,
            allow_live=allow_live,
            now=now,
        )
    current = store.get(record.scope, record.key)
    if current is None or (current.owner_token, current.status) != (owner_token, status):
        return False
    live = (
        current.status == IN_PROGRESS
        and current.lease_expires_at is not None
        and current.lease_expires_at > now
    )
    if live and not allow_live:
        return False
    released = store.force_release(record.scope, record.key)
    # The copy would go at the next sync; the person should not see it come back meanwhile.
    _delete_row_if_unchanged(
        using=using, pk=record.pk, owner_token=owner_token, status=status, allow_live=True, now=now
    )
    return released


def _delete_row_if_unchanged(
    *,
    using: str,
    pk: int,
    owner_token: str,
    status: str,
    allow_live: bool,
    now: dt.datetime,
) -> bool:
    # One statement rather than QuerySet.delete(), which turns into a select then a
    # delete by primary key as soon as any pre_delete receiver exists.
    conn = connections[using]
    q = conn.ops.quote_name
    meta = IdempotencyRecord._meta

    def column(name: str) -> str:
        return q(meta.get_field(name).column or name)  # type: ignore[union-attr]

    sql = (
        f"DELETE FROM {q(meta.db_table)} WHERE {column('id')} = %s "
        f"AND {column('owner_token')} = %s AND {column('status')} = %s"
    )
    params: list[Any] = [pk, owner_token, status]
    if not allow_live:
        sql += (
            f" AND NOT ({column('status')} = %s AND {column('lease_expires_at')} IS NOT NULL"
            f" AND {column('lease_expires_at')} > %s)"
        )
        params += [Status.IN_PROGRESS.value, conn.ops.adapt_datetimefield_value(now)]
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return bool(cursor.rowcount == 1)


def _ids(values: list[str]) -> list[int]:
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            if part.strip().isdigit():
                ids.append(int(part))
    return list(dict.fromkeys(ids))


def _list_time(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return formats.date_format(_local(value), "Y-m-d H:i:s")


def _pretty_json(value: Any) -> SafeString:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return format_html('<pre class="onceonly-pre">{}</pre>', text)


# -- the admin -------------------------------------------------------------------------

if TYPE_CHECKING:
    RecordModelAdmin = admin.ModelAdmin[IdempotencyRecord]
else:  # ModelAdmin is generic only for type checkers
    RecordModelAdmin = admin.ModelAdmin


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(RecordModelAdmin):
    """The "Sent intents" admin: read-only, searchable by key, with a safe "Release"."""

    list_display = (
        "key",
        "scope",
        "status_badge",
        "task",
        "created",
        "completed",
        "duplicates_blocked",
        "last_duplicate",
    )
    list_display_links = ("key",)
    list_filter = ("status", ConditionFilter, TaskFilter, ScopeFilter)
    date_hierarchy = "created_at"
    search_fields = ("key",)
    search_help_text = _(
        "A key, or how it starts (case-sensitive). Searching by prefix uses the index."
    )
    ordering = ("-created_at",)
    sortable_by = ("created",)
    list_per_page = 100
    list_max_show_all = 100
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    actions = ("release",)
    fieldsets = (
        (None, {"fields": ("key", "scope", "status_badge", "lease_state", "fingerprint")}),
        (_("Outcome"), {"fields": ("result_pretty", "error_pretty")}),
        (
            _("Who claimed it"),
            {"fields": ("task_name", "task_id", "owner_token_short", "metadata_pretty")},
        ),
        (
            _("Times"),
            {
                "fields": (
                    "created_at",
                    "updated_at",
                    "completed_at",
                    "lease_expires_at",
                    "expires_at",
                )
            },
        ),
        (_("Duplicates"), {"fields": ("duplicates_blocked", "last_duplicate_at")}),
    )
    # The page is a view: every field shown is read-only.
    readonly_fields = tuple(flatten_fieldsets(fieldsets))

    if hasattr(admin, "ShowFacets"):  # Django 5.0+: facet counts are COUNT(*) per choice
        show_facets = admin.ShowFacets.NEVER

    # -- permissions: read-only, no add, no delete; release needs "change" ------------

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A record is never edited (a save would race the lock that owns it): its page
        # is a view. The model-level change permission is what "Release" requires.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    # -- queries ---------------------------------------------------------------------

    @property
    def using(self) -> str:
        return conf.ONCEONLY_DATABASE

    def get_queryset(self, request: HttpRequest) -> QuerySet[IdempotencyRecord]:
        return super().get_queryset(request).using(self.using)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RecordChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord], search_term: str
    ) -> tuple[QuerySet[IdempotencyRecord], bool]:
        # "Starts with", case-sensitive: an index on the key answers it (LIKE 'abc%'),
        # where icontains would read every row. An exact key is its own prefix.
        term = search_term.strip()
        if not term:
            return queryset, False
        queryset = queryset.filter(key__startswith=term)
        if connections[queryset.db].vendor == "sqlite":
            # SQLite's LIKE ignores ASCII case; "=" does not.
            queryset = queryset.alias(key_prefix=Left("key", len(term))).filter(key_prefix=term)
        return queryset, False

    # -- columns and fields ------------------------------------------------------------

    @admin.display(description=_("status"))
    def status_badge(self, obj: IdempotencyRecord) -> SafeString:
        label = str(obj.get_status_display())
        css = STATUS_CLASSES.get(obj.status, "unknown")
        if obj.status == Status.IN_PROGRESS and not lease_is_live(obj, timezone.now()):
            label, css = str(_("in progress, lease ended")), "stuck"
        return format_html(
            '<span class="onceonly-status onceonly-status--{}">{}</span>', css, label
        )

    @admin.display(description=_("task"))
    def task(self, obj: IdempotencyRecord) -> str:
        if not obj.task_name:
            return "—"
        return format_html('<span title="{}">{}</span>', obj.task_id, obj.task_name)

    # Times in the list as 2026-11-28 14:05:09 (current time zone): unambiguous, to the
    # second, and narrow enough for eight columns.
    @admin.display(description=_("created"), ordering="created_at")
    def created(self, obj: IdempotencyRecord) -> str:
        return _list_time(obj.created_at)

    @admin.display(description=_("completed"))
    def completed(self, obj: IdempotencyRecord) -> str:
        return _list_time(obj.completed_at)

    @admin.display(description=_("last duplicate"))
    def last_duplicate(self, obj: IdempotencyRecord) -> str:
        return _list_time(obj.last_duplicate_at)

    @admin.display(description=_("lease"))
    def lease_state(self, obj: IdempotencyRecord) -> str:
        if obj.status != Status.IN_PROGRESS or obj.lease_expires_at is None:
            return "—"
        when = formats.date_format(_local(obj.lease_expires_at), "DATETIME_FORMAT")
        if lease_is_live(obj, timezone.now()):
            return str(_("live until %(when)s: an owner may be running it now") % {"when": when})
        return str(_("ended at %(when)s with no outcome: stuck") % {"when": when})

    @admin.display(description=_("result"))
    def result_pretty(self, obj: IdempotencyRecord) -> SafeString | str:
        if obj.status != Status.COMPLETED:
            return "—"
        return _pretty_json(obj.result)

    @admin.display(description=_("error"))
    def error_pretty(self, obj: IdempotencyRecord) -> SafeString | str:
        if not obj.error:
            return "—"
        return format_html('<pre class="onceonly-pre">{}</pre>', obj.error)

    @admin.display(description=_("metadata"))
    def metadata_pretty(self, obj: IdempotencyRecord) -> SafeString | str:
        if not obj.metadata:
            return "—"
        return _pretty_json(obj.metadata)

    @admin.display(description=_("owner token"))
    def owner_token_short(self, obj: IdempotencyRecord) -> str:
        # Enough to tell two claims apart; the full token lets its holder finish the claim.
        return f"{obj.owner_token[:8]}…" if obj.owner_token else "—"

    # -- views -----------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = (self.opts.app_label, self.opts.model_name)
        return [
            path(
                "summary/",
                self.admin_site.admin_view(self.summary_view),
                name="{}_{}_summary".format(*info),
            ),
            path(
                "release/",
                self.admin_site.admin_view(self.release_view),
                name="{}_{}_release".format(*info),
            ),
            *super().get_urls(),
        ]

    def _url(self, name: str, *args: Any) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{name}",
            args=args,
        )

    def _store_note(self) -> str | None:
        try:
            store = import_string(conf.ONCEONLY_STORE)
        except ImportError:
            return None
        if isinstance(store, type) and issubclass(store, DatabaseStore):
            return None
        return str(
            _(
                "ONCEONLY_STORE is %(store)s: this table is its audit copy, filled by "
                "manage.py onceonly_sync, and may lag behind it. Release acts on the store."
            )
            % {"store": conf.ONCEONLY_STORE}
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        records = self.get_queryset(request)
        now = timezone.now()
        context = {
            "title": _("Sent intents"),
            "onceonly_unknown": count_rows(records.filter(status=Status.UNKNOWN)),
            "onceonly_stuck": count_rows(records.filter(stuck_filter(now))),
            "onceonly_summary_url": self._url("summary"),
            "onceonly_store_note": self._store_note(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = dict(extra_context or {})
        if self.has_change_permission(request) and str(object_id).isdigit():
            query = f"ids={object_id}"
            preserved = self.get_preserved_filters(request)
            context["onceonly_release_url"] = (
                f"{self._url('release')}?{query}{'&' + preserved if preserved else ''}"
            )
        return super().change_view(request, object_id, form_url, context)

    def summary_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        summary = summarize(using=self.using)
        changelist = self._url("changelist")
        statuses = [
            {
                "status": status.value,
                "css": STATUS_CLASSES[status.value],
                "label": status.label,
                "count": summary.by_status[status.value],
                "link": f"{changelist}?status__exact={status.value}",
            }
            for status in Status
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": _("Sent intents: summary"),
            "opts": self.opts,
            "summary": summary,
            "statuses": statuses,
            "changelist_url": changelist,
            "window_hours": int(summary.window.total_seconds() // 3600),
            "onceonly_store_note": self._store_note(),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/django_onceonly/idempotencyrecord/summary.html", context
        )

    # -- release ---------------------------------------------------------------------

    @admin.action(
        description=_("Release selected intents (they may run again)…"), permissions=["change"]
    )
    def release(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord]
    ) -> HttpResponse | None:
        records = list(queryset.order_by("-created_at")[: MAX_RELEASE + 1])
        if len(records) > MAX_RELEASE:
            self.message_user(
                request,
                _("Release at most %(max)d intents at a time; narrow the selection.")
                % {"max": MAX_RELEASE},
                messages.ERROR,
            )
            return None
        return self._release_confirmation(request, records)

    def _release_confirmation(
        self, request: HttpRequest, records: list[IdempotencyRecord]
    ) -> HttpResponse:
        now = timezone.now()
        rows = [
            {
                "record": record,
                "live": lease_is_live(record, now),
                "css": STATUS_CLASSES.get(record.status, "unknown"),
            }
            for record in records
        ]
        preserved = self.get_preserved_filters(request)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Release sent intents?"),
            "opts": self.opts,
            "rows": rows,
            "live_count": sum(1 for row in rows if row["live"]),
            "completed_count": sum(1 for r in records if r.status == Status.COMPLETED),
            "release_url": f"{self._url('release')}{'?' + preserved if preserved else ''}",
            "changelist_url": add_preserved_filters(
                {"preserved_filters": preserved, "opts": self.opts}, self._url("changelist")
            ),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/django_onceonly/idempotencyrecord/release_confirmation.html", context
        )

    def release_view(self, request: HttpRequest) -> HttpResponse:
        """GET: the confirmation page for ``?ids=``; POST: release what it showed."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        changelist = add_preserved_filters(
            {"preserved_filters": self.get_preserved_filters(request), "opts": self.opts},
            self._url("changelist"),
        )
        if request.method != "POST":
            ids = _ids(request.GET.getlist("ids"))[: MAX_RELEASE + 1]
            records = list(self.get_queryset(request).filter(pk__in=ids).order_by("-created_at"))
            if not records:
                self.message_user(request, _("Nothing to release."), messages.WARNING)
                return HttpResponseRedirect(changelist)
            if len(records) > MAX_RELEASE:
                raise PermissionDenied
            return self._release_confirmation(request, records)
        self._release_posted(request)
        return HttpResponseRedirect(changelist)

    def _release_posted(self, request: HttpRequest) -> None:
        ids = _ids(request.POST.getlist("ids"))[:MAX_RELEASE]
        allow_live = request.POST.get("confirm_live") == "yes"
        now = timezone.now()
        before = {r.pk: r for r in self.get_queryset(request).filter(pk__in=ids)}
        released, changed, live, gone = [], 0, 0, 0
        for pk in ids:
            record = before.get(pk)
            if record is None:
                gone += 1
                continue
            seen_token = request.POST.get(f"token-{pk}", "")
            seen_status = request.POST.get(f"status-{pk}", "")
            if release_if_unchanged(
                using=self.using,
                record=record,
                owner_token=seen_token,
                status=seen_status,
                allow_live=allow_live,
                now=now,
            ):
                released.append(record)
                self._log_release(request, record, seen_status)
            elif (
                record.owner_token == seen_token
                and record.status == seen_status
                and lease_is_live(record, now)
                and not allow_live
            ):
                live += 1
            else:
                changed += 1
        if released:
            self.message_user(
                request,
                ngettext(
                    "Released %(count)d intent: the next attempt with its key will run.",
                    "Released %(count)d intents: the next attempt with each key will run.",
                    len(released),
                )
                % {"count": len(released)},
                messages.SUCCESS,
            )
        if live:
            self.message_user(
                request,
                ngettext(
                    "%(count)d intent was left alone: its lease is live and the box "
                    "confirming that was not ticked.",
                    "%(count)d intents were left alone: their leases are live and the box "
                    "confirming that was not ticked.",
                    live,
                )
                % {"count": live},
                messages.WARNING,
            )
        if changed:
            self.message_user(
                request,
                ngettext(
                    "%(count)d intent changed after you looked at it (claimed or finished) "
                    "and was left alone. Look again before releasing it.",
                    "%(count)d intents changed after you looked at them (claimed or finished) "
                    "and were left alone. Look again before releasing them.",
                    changed,
                )
                % {"count": changed},
                messages.WARNING,
            )
        if gone:
            self.message_user(
                request,
                ngettext(
                    "%(count)d intent no longer exists.",
                    "%(count)d intents no longer exist.",
                    gone,
                )
                % {"count": gone},
                messages.INFO,
            )

    def _log_release(self, request: HttpRequest, record: IdempotencyRecord, status: str) -> None:
        message = (
            f"Released (status was {status}, {record.duplicates_blocked} duplicate(s) blocked, "
            f"owner {record.owner_token[:8]})"
        )
        user_id = request.user.pk
        assert user_id is not None
        if hasattr(LogEntry.objects, "log_actions"):  # Django 5.1+
            LogEntry.objects.log_actions(
                user_id, [record], DELETION, change_message=message, single_object=True
            )
        else:  # pragma: no cover - Django < 5.1
            LogEntry.objects.log_action(  # type: ignore[attr-defined]
                user_id=user_id,
                content_type_id=get_content_type_for_model(record).pk,
                object_id=record.pk,
                object_repr=str(record),
                action_flag=DELETION,
                change_message=message,
            )
        logger.info(
            "django-onceonly: key %r (scope %r) released by admin user %s (status was %s)",
            record.key,
            record.scope,
            request.user.get_username(),
            status,
        )
