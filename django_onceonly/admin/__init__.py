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

The package, by idea: ``filters.py`` (task, scope and condition filters),
``changelist.py`` (bounded counts, the date drill-down), ``release.py`` (the Release
action, its confirmation page and the release itself); this module holds the
``ModelAdmin``: columns, fields, permissions, search and the summary page. The queries
they share with the stats and the commands live in ``django_onceonly.managers``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.db.models.functions import Left
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.module_loading import import_string
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from ..conf import conf
from ..managers import COUNT_CAP, IdempotencyRecordQuerySet
from ..models import IdempotencyRecord
from ..rules import Status
from ..stats import SUMMARY_SCAN_LIMIT, summarize
from ..stores.database import DatabaseStore
from . import outbox as outbox  # registers OutboxMessageAdmin
from .changelist import (
    LIST_DEFERRED,
    EstimatedCountPaginator,
    RecordChangeList,
    local_time,
)
from .filters import (
    VALUES_LIMIT,
    ColumnValueFilter,
    ConditionFilter,
    ScopeFilter,
    TaskFilter,
    distinct_values,
    has_nul,
)
from .release import MAX_RELEASE, STATUS_CLASSES, release_if_unchanged
from .resolution import MarkSentMixin

# Importable from here as from the module this package replaced.
__all__ = [
    "LIST_DEFERRED",
    "MAX_RELEASE",
    "STATUS_CLASSES",
    "VALUES_LIMIT",
    "ColumnValueFilter",
    "ConditionFilter",
    "EstimatedCountPaginator",
    "IdempotencyRecordAdmin",
    "RecordChangeList",
    "ScopeFilter",
    "TaskFilter",
    "distinct_values",
    "lease_is_live",
    "release_if_unchanged",
]


def lease_is_live(record: IdempotencyRecord, now: dt.datetime) -> bool:
    """True when an owner may be running this intent right now (``record.lease_is_live``)."""
    return record.lease_is_live(now)


def _list_time(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return formats.date_format(local_time(value), "Y-m-d H:i:s")


def _pretty_json(value: Any) -> SafeString:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return format_html('<pre class="onceonly-pre">{}</pre>', text)


# -- the admin -------------------------------------------------------------------------


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(MarkSentMixin):
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
    # Counts of rows are exact up to this many, the database's estimate above it.
    count_cap: int | None = COUNT_CAP
    # The summary's duplicates figures read the whole table; above this many rows (per
    # the planner, PostgreSQL only) they come from a sample of about this many rows'
    # worth of pages instead, shown as estimates. ``None``: always the whole table.
    summary_scan_limit: int | None = SUMMARY_SCAN_LIMIT
    actions = ("release", "mark_sent")
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

    def get_queryset(self, request: HttpRequest) -> IdempotencyRecordQuerySet:
        return cast(IdempotencyRecordQuerySet, super().get_queryset(request).using(self.using))

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RecordChangeList

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: QuerySet[IdempotencyRecord],
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> Paginator[IdempotencyRecord]:
        paginator = EstimatedCountPaginator(queryset, per_page, orphans, allow_empty_first_page)
        paginator.cap = self.count_cap
        return paginator

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord], search_term: str
    ) -> tuple[QuerySet[IdempotencyRecord], bool]:
        # "Starts with", case-sensitive: an index on the key answers it (LIKE 'abc%'),
        # where icontains would read every row. An exact key is its own prefix.
        term = search_term.strip()
        if not term:
            return queryset, False
        if has_nul(term):
            return queryset.none(), False
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
        if obj.status == Status.IN_PROGRESS and not obj.lease_is_live():
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
        when = formats.date_format(local_time(obj.lease_expires_at), "DATETIME_FORMAT")
        if obj.lease_is_live():
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
            *self.extra_admin_urls(),
            *super().get_urls(),
        ]

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
            "onceonly_unknown": records.filter(status=Status.UNKNOWN).count_bounded(self.count_cap),
            "onceonly_stuck": records.stuck(now).count_bounded(self.count_cap),
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
        summary = summarize(
            using=self.using, cap=self.count_cap, scan_limit=self.summary_scan_limit
        )
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
            "count_cap": formats.number_format(summary.cap or 0, force_grouping=True),
            "onceonly_store_note": self._store_note(),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/django_onceonly/idempotencyrecord/summary.html", context
        )
