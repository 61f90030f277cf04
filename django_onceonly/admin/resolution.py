"""The "Mark as sent (with a result)" action: a person settles intents whose outcome is unknown.

When the provider's dashboard shows that an ``unknown`` intent did happen (the email was
delivered, the charge went through), a person marks it as sent with what the provider
reported: the record is completed with that result, and every duplicate gets it from then
on. (When it did not happen, "Release" lets it run again.) The write is fenced by the
owner token the person was shown, exactly as the owner's own ``complete()`` would be: a
record that changed meanwhile is left alone.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.options import get_content_type_for_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..conf import conf
from ..encoding import encode_result
from ..exceptions import DamagedRecord, InvalidResult, LockLost, ResultTooLarge
from ..models import IdempotencyRecord
from ..rules import Status
from ..stores import get_store
from .release import MAX_RELEASE, STATUS_CLASSES, ReleaseMixin, _ids

# Only an intent nobody is known to be finishing may be marked by a person.
MARKABLE = (Status.UNKNOWN.value, Status.IN_PROGRESS.value)


class MarkSentMixin(ReleaseMixin):
    """The "Mark as sent" action and its confirmation view."""

    @admin.action(
        description=_("Mark selected intents as sent (with a result)…"), permissions=["change"]
    )
    def mark_sent(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyRecord]
    ) -> HttpResponse | None:
        now = timezone.now()
        records = [
            record
            for record in queryset.order_by("-created_at")[: MAX_RELEASE + 1]
            if record.status == Status.UNKNOWN
            or (record.status == Status.IN_PROGRESS and not record.lease_is_live(now))
        ]
        if not records:
            self.message_user(
                request,
                _("Only intents whose outcome is unknown (or whose lease ended) can be marked."),
                messages.WARNING,
            )
            return None
        return self._mark_sent_page(request, records[:MAX_RELEASE], result_text="null", error="")

    def _mark_sent_page(
        self,
        request: HttpRequest,
        records: list[IdempotencyRecord],
        *,
        result_text: str,
        error: str,
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": _("Mark intents as sent?"),
            "opts": self.opts,
            "rows": [
                {"record": record, "css": STATUS_CLASSES.get(record.status, "unknown")}
                for record in records
            ],
            "result_text": result_text,
            "error": error,
            "action_url": self._url("mark_sent"),
            "changelist_url": self._url("changelist"),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/django_onceonly/idempotencyrecord/mark_sent_confirmation.html", context
        )

    def mark_sent_view(self, request: HttpRequest) -> HttpResponse:
        """POST from the confirmation page: complete what it showed with the given result."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseRedirect(self._url("changelist"))
        ids = _ids(request.POST.getlist("ids"))[:MAX_RELEASE]
        records = list(self.get_queryset(request).filter(pk__in=ids).order_by("-created_at"))
        text = request.POST.get("result", "null")
        try:
            result_json = encode_result(json.loads(text))
        except (ValueError, InvalidResult, ResultTooLarge) as exc:
            # json.JSONDecodeError is a ValueError; nothing is written for a bad result.
            return self._mark_sent_page(
                request, records, result_text=text, error=f"{_('Not valid as a result')}: {exc}"
            )
        now = timezone.now()
        # An intent released meanwhile is gone (a new claim is a new row): left alone too.
        marked, changed = 0, len(ids) - len(records)
        for record in records:
            token = request.POST.get(f"token-{record.pk}", "")
            seen = request.POST.get(f"status-{record.pk}", "")
            if (
                seen not in MARKABLE
                or record.lease_is_live(now)  # an owner may be finishing it right now
                or not self._complete(record, token, result_json, now)
            ):
                changed += 1
                continue
            marked += 1
            self._log_marked(request, record, seen, text)
        if marked:
            self.message_user(
                request,
                ngettext(
                    "Marked %(count)d intent as sent: duplicates now get its result.",
                    "Marked %(count)d intents as sent: duplicates now get their result.",
                    marked,
                )
                % {"count": marked},
                messages.SUCCESS,
            )
        if changed:
            self.message_user(
                request,
                ngettext(
                    "%(count)d intent changed since you looked at it and was left alone.",
                    "%(count)d intents changed since you looked at them and were left alone.",
                    changed,
                )
                % {"count": changed},
                messages.WARNING,
            )
        return HttpResponseRedirect(self._url("changelist"))

    def _complete(
        self, record: IdempotencyRecord, token: str, result_json: str, now: dt.datetime
    ) -> bool:
        ttl = conf.ONCEONLY_TTL
        try:
            get_store().finish(
                record.scope,
                record.key,
                token,
                status=Status.COMPLETED.value,
                result_json=result_json,
                error="",
                now=now,
                expires_at=None if ttl is None else now + dt.timedelta(seconds=float(ttl)),
            )
        except (LockLost, DamagedRecord):
            return False
        return True

    def _log_marked(
        self, request: HttpRequest, record: IdempotencyRecord, status: str, result: str
    ) -> None:
        message = f"Marked as sent (status was {status}); result: {result[:200]}"
        user_id = request.user.pk
        assert user_id is not None
        content_type = get_content_type_for_model(record)
        LogEntry.objects.create(
            user_id=user_id,
            content_type=content_type,
            object_id=str(record.pk),
            object_repr=str(record)[:200],
            action_flag=CHANGE,
            change_message=message,
        )

    def extra_admin_urls(self) -> list[Any]:
        from django.urls import path

        info = (self.opts.app_label, self.opts.model_name)
        return [
            path(
                "mark-sent/",
                self.admin_site.admin_view(self.mark_sent_view),
                name="{}_{}_mark_sent".format(*info),
            )
        ]
