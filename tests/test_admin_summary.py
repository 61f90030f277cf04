"""The operator's summary: the numbers, the admin page and ``manage.py onceonly_stats``."""

from __future__ import annotations

import datetime as dt
import json
import re
from io import StringIO
from typing import Any

import pytest
from django.contrib.admin import site
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_onceonly import check_lock
from django_onceonly.models import IdempotencyRecord, Status
from django_onceonly.stats import LINE_FIELDS, summarize
from django_onceonly.stores import duplicates
from tests.conftest import Backend, backend_params
from tests.factories import IdempotencyRecordFactory

SUMMARY = "admin:django_onceonly_idempotencyrecord_summary"

on_each_database = pytest.mark.parametrize(
    "backend", backend_params("sqlite", "postgres", "mariadb"), indirect=True
)


def make(using: str, **fields: Any) -> IdempotencyRecord:
    record: IdempotencyRecord = IdempotencyRecordFactory.build(**fields)
    record.save(using=using)
    return record


def populate(using: str) -> dt.datetime:
    """A known table; returns the "now" it was built around."""
    now = timezone.now()
    hour = dt.timedelta(hours=1)
    make(using, key="hammered", duplicates_blocked=40, last_duplicate_at=now - hour)
    make(using, key="busy", scope="shop-1", duplicates_blocked=7, last_duplicate_at=now - 2 * hour)
    make(using, key="old_dups", duplicates_blocked=500, last_duplicate_at=now - 30 * hour)
    make(using, key="quiet")
    make(using, key="gone", expired=True)
    make(using, key="declined", status=Status.FAILED, error="card declined")
    make(using, key="held", status=Status.UNKNOWN, expires_at=None, created_at=now - 3 * hour)
    make(using, key="crashed", running=True, lease_expires_at=now - hour, created_at=now - hour)
    make(using, key="running", running=True)
    return now


@on_each_database
def test_summary_counts_statuses_stuck_expired_and_recent_duplicates(backend: Backend) -> None:
    now = populate(backend.alias)

    summary = summarize(now=now)

    assert {status: count.value for status, count in summary.by_status.items()} == {
        "in_progress": 2,
        "completed": 5,
        "failed": 1,
        "unknown": 1,
    }
    assert all(count.exact for count in summary.by_status.values())
    assert (summary.total.value, summary.stuck.value, summary.expired.value) == (9, 1, 1)
    # Only records whose last duplicate is within 24 hours: old_dups is out.
    assert summary.duplicates_in_window == 47
    assert summary.records_with_duplicates_in_window == 2
    assert [(line.key, line.duplicates_blocked) for line in summary.top_keys] == [
        ("hammered", 40),
        ("busy", 7),
    ]
    assert [(line.key, line.status) for line in summary.needs_attention] == [
        ("crashed", "in_progress"),
        ("held", "unknown"),
    ]


@on_each_database
def test_duplicates_blocked_by_real_locks_show_in_the_summary(backend: Backend) -> None:
    check_lock("welcome_email_1").complete("sent")
    for _ in range(3):
        assert check_lock("welcome_email_1").duplicate
    check_lock("welcome_email_2").complete("sent")
    assert check_lock("welcome_email_2").duplicate
    duplicates.flush()

    summary = summarize()

    assert summary.duplicates_in_window == 4
    assert [(line.key, line.duplicates_blocked) for line in summary.top_keys] == [
        ("welcome_email_1", 3),
        ("welcome_email_2", 1),
    ]


@pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)
def test_summary_estimates_counts_above_the_cap(backend: Backend) -> None:
    IdempotencyRecord.objects.using(backend.alias).bulk_create(
        IdempotencyRecordFactory.build_batch(30)
    )

    summary = summarize(cap=10)

    assert not summary.by_status["completed"].exact
    assert summary.by_status["completed"].value >= 11
    assert summary.by_status["failed"].exact
    assert not summary.exact
    assert summarize(cap=None).by_status["completed"].value == 30


@pytest.mark.django_db
def test_summary_page_shows_the_summary_numbers(admin_client: Client) -> None:
    populate("default")

    response = admin_client.get(reverse(SUMMARY))

    html = response.content.decode()
    assert response.status_code == 200
    assert "Sent intents: summary" in html
    counts = dict(
        re.findall(
            r'status--[\w-]+">([\w ]+)</span></th>\s*<td class="number"><a href="[^"]*">([\d,]+)</a>',
            html,
        )
    )
    assert counts == {"in progress": "2", "completed": "5", "failed": "1", "unknown": "1"}
    assert '<strong id="onceonly-duplicates-window">47</strong>' in html
    assert "?condition=stuck" in html
    top = html.split('id="onceonly-top-keys"')[1]
    assert top.index("hammered") < top.index("busy")
    assert "old_dups" not in top


@pytest.mark.django_db
def test_summary_page_is_linked_from_the_list_and_needs_view_permission(
    admin_client: Client,
) -> None:
    listing = admin_client.get(reverse("admin:django_onceonly_idempotencyrecord_changelist"))
    assert reverse(SUMMARY) in listing.content.decode()

    User.objects.create_user("staff", password="pw", is_staff=True)
    client = Client()
    client.force_login(User.objects.get(username="staff"))
    assert client.get(reverse(SUMMARY)).status_code == 403


@pytest.mark.django_db
def test_onceonly_stats_prints_the_same_summary() -> None:
    populate("default")
    out = StringIO()

    call_command("onceonly_stats", stdout=out)

    text = out.getvalue()
    lines = {line.split()[0]: line.split()[-1] for line in text.splitlines() if line.strip()}
    assert (lines["in_progress"], lines["completed"], lines["failed"], lines["total"]) == (
        "2",
        "5",
        "1",
        "9",
    )
    assert re.search(r"stuck in progress \(lease ended\)\s+1$", text, re.M)
    assert re.search(r"expired, awaiting purge\s+1$", text, re.M)
    assert "Duplicates blocked, last 24 h: 47 (by 2 intents" in text
    top = text.split("Top keys")[1]
    assert top.index("hammered") < top.index("busy") < top.index("Unknown or stuck")


@pytest.mark.django_db
def test_onceonly_stats_json_is_summarize_as_a_dict() -> None:
    populate("default")
    out = StringIO()

    call_command("onceonly_stats", "--json", "--top", "1", "--exact", stdout=out)

    printed = json.loads(out.getvalue())
    expected = summarize(top=1, cap=None).as_dict()
    # The outbox's health follows the summary (tests/test_outbox.py).
    assert printed.pop("outbox") == {
        "pending": 0,
        "late": 0,
        "alert_after": 300,
        "oldest_late": None,
    }
    for volatile in ("now",):
        printed.pop(volatile)
        expected.pop(volatile)
    assert printed == expected
    assert printed["by_status"]["completed"] == {"value": 5, "exact": True}
    assert [line["key"] for line in printed["top_keys"]] == ["hammered"]


@pytest.mark.django_db
def test_onceonly_stats_on_an_empty_table() -> None:
    out = StringIO()

    call_command("onceonly_stats", stdout=out)

    assert re.search(r"total\s+0$", out.getvalue(), re.M)
    assert "Duplicates blocked, last 24 h: 0" in out.getvalue()


def analyze(using: str) -> int:
    """``ANALYZE`` the records table; return the planner's row estimate."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"ANALYZE {IdempotencyRecord._meta.db_table}")
    size = IdempotencyRecord.objects.using(using).estimated_size()
    assert size is not None
    return size


on_postgres = pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)


@on_postgres
def test_a_sample_of_every_page_reads_the_same_duplicates_as_the_whole_table(
    backend: Backend,
) -> None:
    now = populate(backend.alias)
    records = IdempotencyRecord.objects.using(backend.alias)
    since = now - dt.timedelta(hours=24)

    sampled = records.recent_duplicates(since, 10, LINE_FIELDS, sample_percent=100)

    assert sampled == records.recent_duplicates(since, 10, LINE_FIELDS)
    assert sampled[:2] == (47, 2)


@on_postgres
def test_summary_samples_the_duplicates_of_a_table_above_the_scan_limit(
    backend: Backend, admin_client: Client, settings: Any
) -> None:
    now = populate(backend.alias)
    IdempotencyRecord.objects.using(backend.alias).bulk_create(
        IdempotencyRecordFactory.build_batch(300)
    )
    size = analyze(backend.alias)
    assert size >= 300

    whole = summarize(now=now, scan_limit=size)
    sampled = summarize(now=now, scan_limit=size // 4)

    assert whole.sample_percent is None
    assert (whole.duplicates_in_window, str(whole.duplicates_count)) == (47, "47")
    assert sampled.sample_percent == pytest.approx(100 * (size // 4) / size)
    assert not sampled.duplicates_count.exact
    assert not sampled.records_with_duplicates_count.exact
    assert sampled.as_dict()["duplicates_sample_percent"] == sampled.sample_percent
    # Counts by status do not depend on the sample.
    assert sampled.by_status == whole.by_status

    page = admin_client.get(reverse(SUMMARY)).content.decode()
    assert 'id="onceonly-duplicates-sample"' not in page  # the default limit: a million rows
    admin = site._registry[IdempotencyRecord]
    settings.ONCEONLY_DATABASE = backend.alias
    original = admin.summary_scan_limit
    admin.summary_scan_limit = size // 4
    try:
        page = admin_client.get(reverse(SUMMARY)).content.decode()
    finally:
        admin.summary_scan_limit = original
    assert 'id="onceonly-duplicates-sample"' in page
    assert re.search(r"estimates from a sample of about 2\d(\.\d+)?% of it", page)
