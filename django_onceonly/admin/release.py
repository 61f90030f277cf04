"""Release from the admin: the action, its confirmation page, and the release itself.

A release deletes exactly the version of a record that the person confirmed: the
confirmation page carries each record's owner token and status, and a record claimed,
finished or released by someone else in between is left alone.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.options import get_content_type_for_model
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..conf import conf
from ..exceptions import DamagedRecord
from ..models import IdempotencyRecord
from ..rules import Status
from ..stores import get_store
from ..stores.database import DatabaseStore

logger = logging.getLogger("django_onceonly")

# How many records one release may touch: one page of the list.
MAX_RELEASE = 100
STATUS_CLASSES = {status.value: status.value.replace("_", "-") for status in Status}


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

    The store decides, in one atomic step (``BaseStore.release_if_unchanged``: one
    conditional ``DELETE`` on the database, one script on Redis). When the store is not
    this table (``RedisStore``, whose records the table copies for the audit trail), the
    copy is then removed as well: the next sync would remove it, and the person should
    not see it come back meanwhile.
    """
    if status not in Status.values:
        return False  # a tampered form: no record has that status, so none is released
    store = get_store()
    try:
        released = store.release_if_unchanged(
            record.scope,
            record.key,
            owner_token=owner_token,
            status=status,
            allow_live=allow_live,
            now=now,
        )
    except DamagedRecord as exc:
        # Nothing is released by guesswork: the message says how an operator removes it.
        logger.warning("django-onceonly: admin release skipped a damaged record: %s", exc)
        return False
    is_this_table = isinstance(store, DatabaseStore) and store.alias == using
    if released and not is_this_table:
        IdempotencyRecord.objects.using(using).delete_if_unchanged(
            record.pk, owner_token=owner_token, status=status, allow_live=True, now=now
        )
    return released


def _ids(values: list[str]) -> list[int]:
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            if part.strip().isdigit():
                ids.append(int(part))
    return list(dict.fromkeys(ids))


if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[IdempotencyRecord]
else:  # ModelAdmin is generic only for type checkers
    _ModelAdmin = admin.ModelAdmin


class ReleaseMixin(_ModelAdmin):
    """The "Release" action and its confirmation view, for ``IdempotencyRecordAdmin``."""

    @property
    def using(self) -> str:
        """The database whose records the admin shows: ``ONCEONLY_DATABASE``."""
        return conf.ONCEONLY_DATABASE

    def _url(self, name: str, *args: Any) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{name}",
            args=args,
        )

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
                "live": record.lease_is_live(now),
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
                and record.lease_is_live(now)
                and not allow_live
            ):
                live += 1
            else:
                changed += 1
        self._report_release(request, len(released), live, changed, gone)

    def _report_release(
        self, request: HttpRequest, released: int, live: int, changed: int, gone: int
    ) -> None:
        if released:
            self.message_user(
                request,
                ngettext(
                    "Released %(count)d intent: the next attempt with its key will run.",
                    "Released %(count)d intents: the next attempt with each key will run.",
                    released,
                )
                % {"count": released},
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
