"""The admin's list with input no record can hold: a NUL in a filter or in the search.

PostgreSQL refuses text with a NUL character outright (``DataError``), so such a
parameter, passed on to the database, made the list answer 500. Every filter, any
field lookup the admin accepts in the query string, and the search treat it as
matching nothing, on every database.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from django_onceonly import check_lock
from tests.conftest import Backend, backend_params

CHANGELIST = "admin:django_onceonly_idempotencyrecord_changelist"
SUMMARY = "admin:django_onceonly_idempotencyrecord_summary"
RELEASE = "admin:django_onceonly_idempotencyrecord_release"

on_each_database = pytest.mark.parametrize(
    "backend", backend_params("sqlite", "postgres", "mariadb"), indirect=True
)

NUL_PARAMETERS = [
    pytest.param({"q": "\x00"}, id="search"),
    pytest.param({"q": "welcome\x00"}, id="search-after-a-prefix"),
    pytest.param({"status__exact": "\x00"}, id="status"),
    pytest.param({"status__exact": "completed\x00"}, id="status-after-a-value"),
    pytest.param({"status__isnull": "\x00"}, id="status-isnull"),
    pytest.param({"condition": "\x00"}, id="condition"),
    pytest.param({"task_name": "\x00"}, id="task"),
    pytest.param({"task_name": "emails.welcome\x00"}, id="task-after-a-value"),
    pytest.param({"scope": "\x00"}, id="scope"),
    pytest.param({"scope": "tenant-a\x00"}, id="scope-after-a-value"),
    pytest.param({"created_at__year": "\x00"}, id="date-year"),
    pytest.param({"created_at__year": "2026", "created_at__month": "\x00"}, id="date-month"),
    pytest.param(
        {"created_at__year": "2026", "created_at__month": "5", "created_at__day": "\x00"},
        id="date-day",
    ),
    pytest.param({"created_at__month": "\x00"}, id="date-month-alone"),
    # Any lookup on a field of the model is accepted in the query string by Django.
    pytest.param({"key": "\x00"}, id="key"),
    pytest.param({"key__startswith": "a\x00"}, id="key-startswith"),
    pytest.param({"fingerprint": "\x00"}, id="fingerprint"),
    pytest.param({"owner_token": "\x00"}, id="owner-token"),
    pytest.param({"error__contains": "\x00"}, id="error"),
    pytest.param({"task_id": "\x00"}, id="task-id"),
    pytest.param({"status__exact": "completed", "q": "welcome\x00"}, id="search-and-a-filter"),
    pytest.param({"scope": "tenant-a", "task_name": "\x00"}, id="two-filters-one-bad"),
]


def records_with_every_value() -> None:
    check_lock("welcome_email_1", scope="tenant-a", task_name="emails.welcome").complete("sent")
    check_lock("welcome_email_2", task_name="emails.welcome").fail("bounced")
    check_lock("charge_1", lease=600)


@on_each_database
@pytest.mark.parametrize("params", NUL_PARAMETERS)
def test_a_nul_in_a_filter_or_the_search_lists_nothing(
    backend: Backend, admin_client: Client, params: dict[str, Any]
) -> None:
    records_with_every_value()

    response = admin_client.get(reverse(CHANGELIST), params)

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []
    assert "0 sent intents" in response.content.decode()
    # Not an empty table: the list without the parameter shows every record.
    assert len(admin_client.get(reverse(CHANGELIST)).context["cl"].result_list) == 3


@on_each_database
def test_a_nul_is_never_offered_as_a_filter_choice(backend: Backend, admin_client: Client) -> None:
    records_with_every_value()

    response = admin_client.get(reverse(CHANGELIST), {"scope": "\x00", "task_name": "a\x00"})

    specs = {str(spec.title): spec for spec in response.context["cl"].filter_specs}
    assert [choice for choice, _ in specs["scope"].lookup_choices] == ["", "tenant-a"]
    assert [choice for choice, _ in specs["task"].lookup_choices] == ["", "emails.welcome"]


@on_each_database
def test_a_nul_in_the_release_or_summary_parameters_is_harmless(
    backend: Backend, admin_client: Client
) -> None:
    records_with_every_value()

    assert admin_client.get(reverse(SUMMARY), {"q": "\x00"}).status_code == 200
    release = admin_client.get(reverse(RELEASE), {"ids": "\x00", "_changelist_filters": "\x00"})
    assert release.status_code == 302
    posted = admin_client.post(reverse(RELEASE), {"ids": ["1\x00"], "token-1": "\x00"})
    assert posted.status_code == 302
    assert backend.record("charge_1") is not None
