"""The "Outbox messages" admin: pending rows, their age and their last publish error.

Read-only, like the records' admin: rows are written by ``enqueue`` and the relay
only. The list opens on the pending rows (what an operator looks for) and warns when
some are older than ``ONCEONLY_OUTBOX_ALERT_AFTER``: a growing outbox means no relay is
running, or it cannot reach the broker.

Kept apart from ``admin.py`` while that module becomes the ``admin/`` package; it is
imported by ``OnceOnlyConfig.ready()`` when ``django.contrib.admin`` is installed, and
moves into the package as its own file once that has landed.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from ..conf import conf
from ..models import OutboxMessage
from ..outbox import outbox_health


class StateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("pending", _("pending")), ("published", _("published")), ("all", _("all"))]

    def choices(self, changelist: Any) -> Any:
        # "Pending" is the default view, so the "All" entry Django adds is replaced.
        for lookup, title in self.lookup_choices:
            yield {
                "selected": (self.value() or "pending") == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value() or "pending"
        if value == "pending":
            return queryset.filter(published_at__isnull=True)
        if value == "published":
            return queryset.filter(published_at__isnull=False)
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = [
        "task_name",
        "task_id",
        "created_at",
        "age",
        "attempts",
        "error",
        "published_at",
    ]
    list_filter = [StateFilter]
    search_fields = ["=task_id"]
    ordering = ["created_at"]
    list_per_page = 100
    show_full_result_count = False
    readonly_fields = [
        "task_name",
        "task_id",
        "payload",
        "queue",
        "eta",
        "created_at",
        "published_at",
        "attempts",
        "last_attempt_at",
        "last_error",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).using(conf.ONCEONLY_DATABASE)

    @admin.display(description=_("age"))
    def age(self, obj: OutboxMessage) -> str:
        end = obj.published_at or timezone.now()
        total = int((end - obj.created_at).total_seconds())
        hours, rest = divmod(max(total, 0), 3600)
        minutes, secs = divmod(rest, 60)
        return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"

    @admin.display(description=_("last publish error"))
    def error(self, obj: OutboxMessage) -> str:
        return Truncator(obj.last_error).chars(80)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        health = outbox_health()
        if health.late:
            messages.warning(request, health.describe())
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
