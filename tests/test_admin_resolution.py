"""The admin's "Mark as sent (with a result)" action and the "awaiting review" filter."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from django_onceonly import check_lock
from django_onceonly.models import IdempotencyRecord

CHANGELIST = "admin:django_onceonly_idempotencyrecord_changelist"
MARK_SENT = "admin:django_onceonly_idempotencyrecord_mark_sent"

pytestmark = pytest.mark.django_db


def unknown(key: str) -> IdempotencyRecord:
    check_lock(key, task_name="shop.send_welcome_email").fail(
        TimeoutError("no answer"), outcome_unknown=True
    )
    return IdempotencyRecord.objects.get(key=key)


def confirmation(client: Client, *records: IdempotencyRecord) -> Any:
    return client.post(
        reverse(CHANGELIST),
        {"action": "mark_sent", "_selected_action": [str(r.pk) for r in records]},
    )


def form_of(response: Any, result: str) -> dict[str, Any]:
    data: dict[str, Any] = {"ids": [], "result": result}
    for entry in response.context["rows"]:
        record = entry["record"]
        data["ids"].append(str(record.pk))
        data[f"token-{record.pk}"] = record.owner_token
        data[f"status-{record.pk}"] = record.status
    return data


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_marking_an_unknown_intent_as_sent_completes_it_with_the_result(
    admin_client: Client,
) -> None:
    record = unknown("welcome_email_1")
    page = confirmation(admin_client, record)
    assert page.status_code == 200
    assert "welcome_email_1" in page.content.decode()

    done = admin_client.post(reverse(MARK_SENT), form_of(page, '{"message_id": "pm-42"}'))

    assert done.status_code == 302
    assert messages_of(done) == ["Marked 1 intent as sent: duplicates now get its result."]
    again = check_lock("welcome_email_1")
    assert again.duplicate
    assert again.result == {"message_id": "pm-42"}
    entry = LogEntry.objects.get(object_id=str(record.pk))
    assert entry.action_flag == CHANGE
    assert entry.change_message.startswith("Marked as sent (status was unknown)")


def test_a_result_that_is_not_json_is_refused_and_nothing_is_written(
    admin_client: Client,
) -> None:
    record = unknown("welcome_email_2")
    page = confirmation(admin_client, record)

    again = admin_client.post(reverse(MARK_SENT), form_of(page, "{message_id: pm-42"))

    assert again.status_code == 200
    assert "Not valid as a result" in again.content.decode()
    assert IdempotencyRecord.objects.get(key="welcome_email_2").status == "unknown"
    assert not LogEntry.objects.exists()


def test_an_intent_that_changed_meanwhile_is_left_alone(admin_client: Client) -> None:
    record = unknown("welcome_email_3")
    page = confirmation(admin_client, record)
    # Meanwhile someone releases it and a new attempt claims it.
    IdempotencyRecord.objects.filter(key="welcome_email_3").delete()
    newer = check_lock("welcome_email_3")

    done = admin_client.post(reverse(MARK_SENT), form_of(page, '"sent"'))

    assert "1 intent changed since you looked at it and was left alone." in messages_of(done)
    current = IdempotencyRecord.objects.get(key="welcome_email_3")
    assert (current.status, current.owner_token) == ("in_progress", newer.token)


def test_a_running_or_completed_intent_cannot_be_marked(admin_client: Client) -> None:
    check_lock("running", lease=600)
    check_lock("done").complete("ok")
    records = list(IdempotencyRecord.objects.filter(key__in=["running", "done"]))

    response = confirmation(admin_client, *records)

    assert response.status_code == 302
    assert messages_of(response) == [
        "Only intents whose outcome is unknown (or whose lease ended) can be marked."
    ]


def test_marking_needs_the_change_permission(client: Client) -> None:
    record = unknown("welcome_email_4")
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_idempotencyrecord"))
    client.force_login(user)
    form = {
        "ids": [record.pk],
        f"token-{record.pk}": record.owner_token,
        f"status-{record.pk}": "unknown",
        "result": '"sent"',
    }

    assert client.post(reverse(MARK_SENT), form).status_code == 403
    assert IdempotencyRecord.objects.get(key="welcome_email_4").status == "unknown"


def test_the_awaiting_review_filter_lists_unknown_and_stuck_intents(admin_client: Client) -> None:
    unknown("u")
    check_lock("stuck", lease=0.001)
    check_lock("running", lease=600)
    check_lock("done").complete(None)
    import time

    time.sleep(0.01)

    response = admin_client.get(reverse(CHANGELIST), {"condition": "review"})

    assert {record.key for record in response.context["cl"].result_list} == {"u", "stuck"}
