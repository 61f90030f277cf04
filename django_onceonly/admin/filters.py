"""The list filters of "Sent intents": by task, by scope (index skip-scans) and by condition."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import PAGE_VAR
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..models import IdempotencyRecord

# How many distinct tasks or scopes a filter lists before it offers a text box instead.
VALUES_LIMIT = 30


def distinct_values(using: str, field_name: str, limit: int) -> list[str]:
    """The first ``limit`` distinct values of a column of ``using``'s records table.

    See :meth:`~django_onceonly.managers.IdempotencyRecordQuerySet.distinct_values`.
    """
    return IdempotencyRecord.objects.using(using).distinct_values(field_name, limit)


def has_nul(value: str) -> bool:
    """True for text no record can hold: PostgreSQL refuses NUL in text outright."""
    return "\x00" in value


class ColumnValueFilter(admin.SimpleListFilter):
    """Choices are the column's values found by an index skip-scan.

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
        if current is not None and current not in values and not has_nul(current):
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
            ("review", _("awaiting review: outcome unknown or lease ended")),
            ("stuck", _("stuck: in progress, lease ended")),
            ("running", _("running: lease live")),
            ("expired", _("expired, awaiting purge")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        value = self.value()
        if value == "review":
            return queryset.needs_attention(now)  # type: ignore[attr-defined, no-any-return]
        if value == "stuck":
            return queryset.stuck(now)  # type: ignore[attr-defined, no-any-return]
        if value == "running":
            return queryset.running(now)  # type: ignore[attr-defined, no-any-return]
        if value == "expired":
            return queryset.expired(now)  # type: ignore[attr-defined, no-any-return]
        return queryset
