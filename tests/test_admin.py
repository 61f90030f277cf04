"""The "Sent intents" admin: what it shows, what it refuses, and how it releases.

Most tests run on SQLite (the admin's HTML and permissions do not depend on the
database); the release tests, whose safety is a conditional ``DELETE``, run on each
database, with the records written by real locks.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_onceonly import LockLost, check_lock
from django_onceonly.admin import (
    MAX_RELEASE,
    VALUES_LIMIT,
    IdempotencyRecordAdmin,
    distinct_values,
)
from django_onceonly.managers import COUNT_CAP
from django_onceonly.models import IdempotencyRecord, Status
from tests.conftest import Backend, backend_params
from tests.factories import IdempotencyRecordFactory

CHANGELIST = "admin:django_onceonly_idempotencyrecord_changelist"
RELEASE = "admin:django_onceonly_idempotencyrecord_release"
SUMMARY = "admin:django_onceonly_idempotencyrecord_summary"

on_each_database = pytest.mark.parametrize(
    "backend", backend_params("sqlite", "postgres", "mariadb"), indirect=True
)


def change_url(record: IdempotencyRecord) -> str:
    return reverse("admin:django_onceonly_idempotencyrecord_change", args=[record.pk])


def make(using: str = "default", **fields: Any) -> IdempotencyRecord:
    record: IdempotencyRecord = IdempotencyRecordFactory.build(**fields)
    record.save(using=using)
    return record


def row(key: str, scope: str = "", using: str = "default") -> IdempotencyRecord | None:
    return IdempotencyRecord.objects.using(using).filter(scope=scope, key=key).first()


def keys_listed(response: Any) -> set[str]:
    return {record.key for record in response.context["cl"].result_list}


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def confirmation_form(response: Any) -> dict[str, Any]:
    """The hidden fields the confirmation page posts back (ids, tokens, statuses)."""
    assert response.status_code == 200
    data: dict[str, Any] = {"ids": []}
    for entry in response.context["rows"]:
        record = entry["record"]
        data["ids"].append(str(record.pk))
        data[f"token-{record.pk}"] = record.owner_token
        data[f"status-{record.pk}"] = record.status
    return data


def viewer_client(*codenames: str) -> Client:
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="django_onceonly", codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


# -- the list ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_changelist_is_titled_sent_intents_and_shows_each_column(admin_client: Client) -> None:
    now = timezone.now()
    make(
        key="welcome_email_7",
        scope="tenant-a",
        task_name="emails.send_welcome",
        task_id="c0ffee",
        duplicates_blocked=3,
        last_duplicate_at=now,
    )

    response = admin_client.get(reverse(CHANGELIST))

    html = response.content.decode()
    assert response.status_code == 200
    assert "<h1>Sent intents</h1>" in html
    for header in (
        "Key",
        "Scope",
        "Status",
        "Task",
        "Created",
        "Completed",
        "Duplicates blocked",
        "Last duplicate",
    ):
        assert f">{header}<" in html
    assert "welcome_email_7" in html
    assert "tenant-a" in html
    assert 'title="c0ffee">emails.send_welcome<' in html


@pytest.mark.django_db
def test_unknown_failed_and_stuck_records_stand_out(admin_client: Client) -> None:
    past = timezone.now() - dt.timedelta(minutes=1)
    make(key="ok")
    make(key="held", status=Status.UNKNOWN, expires_at=None)
    make(key="declined", status=Status.FAILED, error="card declined")
    make(key="crashed", running=True, lease_expires_at=past)
    make(key="running", running=True)

    html = admin_client.get(reverse(CHANGELIST)).content.decode()

    assert 'onceonly-status--unknown">unknown<' in html
    assert 'onceonly-status--failed">failed<' in html
    assert 'onceonly-status--stuck">in progress, lease ended<' in html
    assert 'onceonly-status--in-progress">in progress<' in html
    assert 'onceonly-status--completed">completed<' in html
    # The banner above the list names what needs a person.
    assert "1 unknown" in html
    assert "1 stuck in progress" in html


@pytest.mark.django_db
def test_records_cannot_be_added_edited_or_deleted(admin_client: Client) -> None:
    record = make(key="k", result={"id": 1})

    add = reverse("admin:django_onceonly_idempotencyrecord_add")
    assert admin_client.get(add).status_code == 403
    listing = admin_client.get(reverse(CHANGELIST))
    assert add not in listing.content.decode()
    actions = [name for name, _ in listing.context["action_form"].fields["action"].choices]
    assert actions == ["", "release", "mark_sent"]
    detail = admin_client.get(change_url(record))
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()
    assert admin_client.post(change_url(record), {"key": "other"}).status_code == 403
    delete = reverse("admin:django_onceonly_idempotencyrecord_delete", args=[record.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert row("k") is not None


@pytest.mark.django_db
def test_detail_page_pretty_prints_result_error_and_metadata(admin_client: Client) -> None:
    done = make(key="charge_1", result={"charge": "ch_1", "amount": 500}, metadata={"user": 7})
    failed = make(key="charge_2", status=Status.FAILED, error="TimeoutError: <provider> slow")

    html = admin_client.get(change_url(done)).content.decode()
    assert (
        '<pre class="onceonly-pre">{\n  &quot;amount&quot;: 500,\n  &quot;charge&quot;: &quot;ch_1&quot;\n}</pre>'
        in html
    )
    assert '<pre class="onceonly-pre">{\n  &quot;user&quot;: 7\n}</pre>' in html
    assert done.owner_token not in html  # only its first characters are shown
    assert f"{done.owner_token[:8]}…" in html

    html = admin_client.get(change_url(failed)).content.decode()
    assert '<pre class="onceonly-pre">TimeoutError: &lt;provider&gt; slow</pre>' in html


@pytest.mark.django_db
def test_a_completed_null_result_is_shown_as_null(admin_client: Client) -> None:
    record = make(key="k", result=None)

    html = admin_client.get(change_url(record)).content.decode()

    assert '<pre class="onceonly-pre">null</pre>' in html


# -- search and filters ------------------------------------------------------------------


@pytest.mark.django_db
def test_search_is_a_case_sensitive_prefix_of_the_key(admin_client: Client) -> None:
    for key in ("welcome_email_1", "welcome_email_10", "Welcome_email_1", "pw_reset_1", "a%b"):
        make(key=key)

    def search(term: str) -> set[str]:
        return keys_listed(admin_client.get(reverse(CHANGELIST), {"q": term}))

    assert search("welcome_email_1") == {"welcome_email_1", "welcome_email_10"}
    assert search("  welcome_email_10 ") == {"welcome_email_10"}
    assert search("Welcome") == {"Welcome_email_1"}
    assert search("email") == set()  # not "contains": that would read every row
    assert search("a%") == {"a%b"}  # LIKE wildcards are matched literally
    assert search("welcome_email_") == {"welcome_email_1", "welcome_email_10"}


@pytest.mark.django_db
def test_search_sends_a_prefix_like_not_a_contains(admin_client: Client) -> None:
    make(key="welcome_email_1")

    with CaptureQueriesContext(connections["default"]) as queries:
        admin_client.get(reverse(CHANGELIST), {"q": "welcome"})

    likes = [q["sql"] for q in queries.captured_queries if " LIKE " in q["sql"]]
    assert likes
    assert all("'welcome%'" in sql for sql in likes), likes


@pytest.mark.django_db
def test_filters_by_status_task_scope_and_condition(admin_client: Client) -> None:
    past = timezone.now() - dt.timedelta(minutes=1)
    make(key="a", task_name="emails.welcome")
    make(key="b", task_name="emails.welcome", scope="tenant-b", status=Status.FAILED)
    make(key="c", task_name="billing.charge", status=Status.UNKNOWN, expires_at=None)
    make(key="d", running=True, lease_expires_at=past)
    make(key="e", running=True)
    make(key="f", expired=True)

    def listed(**params: str) -> set[str]:
        return keys_listed(admin_client.get(reverse(CHANGELIST), params))

    assert listed(status__exact="failed") == {"b"}
    assert listed(status__exact="unknown") == {"c"}
    assert listed(task_name="emails.welcome") == {"a", "b"}
    assert listed(task_name="") == {"d", "e", "f"}
    assert listed(scope="tenant-b") == {"b"}
    assert listed(scope="") == {"a", "c", "d", "e", "f"}
    assert listed(condition="stuck") == {"d"}
    assert listed(condition="running") == {"e"}
    assert listed(condition="expired") == {"f"}
    assert listed(status__exact="completed", task_name="emails.welcome") == {"a"}

    response = admin_client.get(reverse(CHANGELIST))
    specs = {str(spec.title): spec for spec in response.context["cl"].filter_specs}
    assert [choice for choice, _ in specs["task"].lookup_choices] == [
        "",
        "billing.charge",
        "emails.welcome",
    ]
    assert [choice for choice, _ in specs["scope"].lookup_choices] == ["", "tenant-b"]
    assert [label for _, label in specs["scope"].lookup_choices] == ["(empty scope)", "tenant-b"]


@pytest.mark.django_db
def test_a_filter_with_many_values_lists_the_first_and_offers_a_box(admin_client: Client) -> None:
    for n in range(VALUES_LIMIT + 5):
        make(key=f"k{n}", task_name=f"task_{n:03d}")

    response = admin_client.get(reverse(CHANGELIST), {"status__exact": "completed"})

    specs = {str(spec.title): spec for spec in response.context["cl"].filter_specs}
    assert len(specs["task"].lookup_choices) == VALUES_LIMIT
    assert specs["task"].more
    html = response.content.decode()
    assert '<input type="text" name="task_name"' in html
    assert '<input type="hidden" name="status__exact" value="completed">' in html
    # A value past the listed ones, typed in the box, filters like any other.
    typed = admin_client.get(reverse(CHANGELIST), {"task_name": f"task_{VALUES_LIMIT + 3:03d}"})
    assert keys_listed(typed) == {f"k{VALUES_LIMIT + 3}"}


@on_each_database
def test_distinct_values_walks_each_value_once_in_order(backend: Backend) -> None:
    for n, scope in enumerate(["b", "a", "", "b", "B", "a", "c"]):
        make(backend.alias, key=f"k{n}", scope=scope)

    assert distinct_values(backend.alias, "scope", 10) == ["", "B", "a", "b", "c"]
    assert distinct_values(backend.alias, "scope", 3) == ["", "B", "a"]
    assert distinct_values(backend.alias, "task_name", 10) == [""]


@pytest.mark.django_db
def test_date_drill_down_lists_only_days_that_have_records(admin_client: Client) -> None:
    tz = timezone.get_current_timezone()
    for day in (3, 3, 17, 28):
        make(
            key=f"d{day}-{time.monotonic_ns()}", created_at=dt.datetime(2026, 5, day, 12, tzinfo=tz)
        )
    make(key="other-year", created_at=dt.datetime(2025, 11, 2, 9, tzinfo=tz))

    def titles(**params: str) -> list[str]:
        context = admin_client.get(reverse(CHANGELIST), params).context["cl"]
        return [str(choice["title"]) for choice in context.date_hierarchy_context()["choices"]]

    assert titles() == ["2025", "2026"]
    assert titles(created_at__year="2026") == ["May 2026"]
    assert titles(created_at__year="2026", created_at__month="5") == ["May 3", "May 17", "May 28"]
    listed = admin_client.get(
        reverse(CHANGELIST),
        {"created_at__year": "2026", "created_at__month": "5", "created_at__day": "3"},
    )
    assert len(listed.context["cl"].result_list) == 2
    # A month without a year is a plain filter: the drill-down starts from the years.
    month_only = admin_client.get(reverse(CHANGELIST), {"created_at__month": "11"})
    assert month_only.status_code == 200
    assert {r.key for r in month_only.context["cl"].result_list} == {"other-year"}


@pytest.mark.django_db
def test_changelist_queries_do_not_grow_with_the_number_of_records(admin_client: Client) -> None:
    def queries_for_page() -> int:
        with CaptureQueriesContext(connections["default"]) as queries:
            assert admin_client.get(reverse(CHANGELIST)).status_code == 200
        return len(queries)

    for n in range(3):
        make(key=f"small-{n}", task_name="t", duplicates_blocked=n)
    few = queries_for_page()
    for n in range(80):
        make(key=f"big-{n}", task_name="t", duplicates_blocked=n, status=Status.FAILED)

    assert queries_for_page() == few


@pytest.mark.django_db
def test_changelist_never_counts_the_whole_table(admin_client: Client) -> None:
    make(key="k")

    with CaptureQueriesContext(connections["default"]) as queries:
        admin_client.get(reverse(CHANGELIST))

    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts
    # Every count is bounded: COUNT(*) over a LIMITed subquery.
    assert all("LIMIT" in sql.upper() for sql in counts), counts


# -- counts above the cap ----------------------------------------------------------------


@pytest.mark.parametrize("backend", backend_params("postgres", "mariadb"), indirect=True)
def test_counts_above_the_cap_are_the_planners_estimate(backend: Backend) -> None:
    from django_onceonly.stats import count_rows

    IdempotencyRecord.objects.using(backend.alias).bulk_create(
        IdempotencyRecordFactory.build_batch(40)
    )
    records = IdempotencyRecord.objects.using(backend.alias)

    assert (count_rows(records, cap=100).value, count_rows(records, cap=100).exact) == (40, True)
    estimated = count_rows(records, cap=10)
    assert not estimated.exact
    assert estimated.value >= 11
    assert str(estimated).startswith("about ")


@pytest.mark.django_db
def test_sqlite_has_no_estimate_so_counts_stay_exact() -> None:
    from django_onceonly.stats import count_rows

    IdempotencyRecord.objects.bulk_create(IdempotencyRecordFactory.build_batch(12))

    counted = count_rows(IdempotencyRecord.objects.all(), cap=5)

    assert (counted.value, counted.exact, str(counted)) == (12, True, "12")


@pytest.mark.django_db
def test_a_small_list_shows_its_exact_count(admin_client: Client) -> None:
    make(key="k")

    html = admin_client.get(reverse(CHANGELIST)).content.decode()

    assert "1 sent intent" in html
    assert "(estimated)" not in html


@pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)
def test_a_big_list_says_about_and_estimated(backend: Backend, admin_client: Client) -> None:
    with connections[backend.alias].cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_onceonly_idempotencyrecord (scope, key, status, owner_token, "
            "fingerprint, error, task_name, task_id, metadata, created_at, updated_at, "
            "duplicates_blocked) SELECT '', 'k' || g, 'completed', md5(g::text), '', '', '', '', "
            "'{}', now(), now(), 0 FROM generate_series(1, 12000) AS g"
        )
        cursor.execute("ANALYZE django_onceonly_idempotencyrecord")

    response = admin_client.get(reverse(CHANGELIST))

    html = response.content.decode()
    assert not response.context["cl"].paginator.counted.exact
    assert re.search(r"about [\d,]+ sent intents", html)
    assert "(estimated)" in html
    searched = admin_client.get(reverse(CHANGELIST), {"q": "k1199"})
    assert searched.context["cl"].paginator.counted.exact
    assert {r.key for r in searched.context["cl"].result_list} == {
        "k1199",
        *(f"k1199{n}" for n in range(10)),
    }


@pytest.mark.django_db
def test_the_summary_states_the_count_cap_it_counted_with(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    html = admin_client.get(reverse(SUMMARY)).content.decode()
    assert f"Counts above {COUNT_CAP:,} are" in html

    monkeypatch.setattr(IdempotencyRecordAdmin, "count_cap", 1234)
    response = admin_client.get(reverse(SUMMARY))

    assert response.context["summary"].cap == 1234
    assert "Counts above 1,234 are" in response.content.decode()


@pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)
def test_the_estimated_label_states_the_count_cap_it_counted_with(
    backend: Backend, admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    IdempotencyRecord.objects.using(backend.alias).bulk_create(
        IdempotencyRecordFactory.build_batch(30)
    )
    with connections[backend.alias].cursor() as cursor:
        cursor.execute("ANALYZE django_onceonly_idempotencyrecord")
    monkeypatch.setattr(IdempotencyRecordAdmin, "count_cap", 5)

    response = admin_client.get(reverse(CHANGELIST))

    assert not response.context["cl"].paginator.counted.exact
    assert 'title="Counted up to 5; beyond that the database estimates."' in (
        response.content.decode()
    )


# -- release -------------------------------------------------------------------------------


@on_each_database
def test_release_asks_for_confirmation_then_releases_and_logs_each(
    backend: Backend, admin_client: Client
) -> None:
    check_lock("welcome_email_1").complete({"message_id": "m1"})
    check_lock("welcome_email_2").fail("bounced")
    check_lock("welcome_email_3").complete("kept")
    chosen = list(
        IdempotencyRecord.objects.using(backend.alias).filter(
            key__in=["welcome_email_1", "welcome_email_2"]
        )
    )

    page = admin_client.post(
        reverse(CHANGELIST),
        {"action": "release", "_selected_action": [r.pk for r in chosen]},
    )

    assert page.status_code == 200
    assert "Release sent intents?" in page.content.decode()
    assert row("welcome_email_1", using=backend.alias) is not None  # nothing yet

    done = admin_client.post(reverse(RELEASE), confirmation_form(page), follow=True)

    assert done.redirect_chain[-1][0] == reverse(CHANGELIST)
    assert "Released 2 intents" in " ".join(messages_of(done))
    assert row("welcome_email_1", using=backend.alias) is None
    assert row("welcome_email_2", using=backend.alias) is None
    assert row("welcome_email_3", using=backend.alias) is not None
    assert check_lock("welcome_email_1").locked  # it runs again
    entries = LogEntry.objects.filter(action_flag=DELETION).order_by("object_repr")
    assert [(e.object_repr, e.object_id) for e in entries] == sorted(
        (r.key, str(r.pk)) for r in chosen
    )
    assert "status was completed" in entries[0].change_message
    assert "status was failed" in entries[1].change_message


@on_each_database
def test_release_leaves_a_record_that_was_reclaimed_after_the_page_was_shown(
    backend: Backend, admin_client: Client
) -> None:
    past = timezone.now() - dt.timedelta(minutes=5)
    stale = make(backend.alias, key="charge_1", running=True, lease_expires_at=past)
    page = admin_client.get(reverse(RELEASE), {"ids": stale.pk})
    assert page.context["live_count"] == 0

    # A retry takes the stale lease over before the person confirms.
    retry = check_lock("charge_1")
    assert retry.locked

    done = admin_client.post(reverse(RELEASE), confirmation_form(page), follow=True)

    assert "changed after you looked" in " ".join(messages_of(done))
    current = row("charge_1", using=backend.alias)
    assert current is not None
    assert current.owner_token == retry.token
    assert not LogEntry.objects.exists()
    retry.complete("sent once")  # the live owner still owns it


@on_each_database
def test_release_leaves_a_record_that_finished_after_the_page_was_shown(
    backend: Backend, admin_client: Client
) -> None:
    owner = check_lock("charge_1", lease=600)
    record = row("charge_1", using=backend.alias)
    assert record is not None
    page = admin_client.get(reverse(RELEASE), {"ids": record.pk})
    owner.complete({"charge": "ch_1"})

    form = {**confirmation_form(page), "confirm_live": "yes"}
    done = admin_client.post(reverse(RELEASE), form, follow=True)

    assert "changed after you looked" in " ".join(messages_of(done))
    assert check_lock("charge_1").result == {"charge": "ch_1"}


@on_each_database
def test_a_live_lease_is_released_only_with_the_extra_confirmation(
    backend: Backend, admin_client: Client
) -> None:
    owner = check_lock("charge_1", lease=600)
    record = row("charge_1", using=backend.alias)
    assert record is not None
    page = admin_client.get(reverse(RELEASE), {"ids": record.pk})
    assert page.context["live_count"] == 1
    assert 'name="confirm_live"' in page.content.decode()

    refused = admin_client.post(reverse(RELEASE), confirmation_form(page), follow=True)

    assert "left alone: its lease is live" in " ".join(messages_of(refused))
    assert row("charge_1", using=backend.alias) is not None

    form = {**confirmation_form(page), "confirm_live": "yes"}
    admin_client.post(reverse(RELEASE), form)

    assert row("charge_1", using=backend.alias) is None
    assert LogEntry.objects.filter(action_flag=DELETION).count() == 1
    with pytest.raises(LockLost):
        owner.complete("late")


@pytest.mark.django_db
def test_release_from_the_detail_page(admin_client: Client) -> None:
    record = make(key="pw_reset_9", status=Status.UNKNOWN, expires_at=None)

    detail = admin_client.get(change_url(record))
    link = f'{reverse(RELEASE)}?ids={record.pk}"'
    assert link in detail.content.decode()
    page = admin_client.get(reverse(RELEASE), {"ids": record.pk})
    admin_client.post(reverse(RELEASE), confirmation_form(page))

    assert row("pw_reset_9") is None
    assert LogEntry.objects.get().object_repr == "pw_reset_9"


@pytest.mark.django_db
def test_release_keeps_the_list_filters(admin_client: Client) -> None:
    record = make(key="k", status=Status.FAILED)

    page = admin_client.post(
        f"{reverse(CHANGELIST)}?status__exact=failed",
        {"action": "release", "_selected_action": [record.pk]},
    )
    assert "_changelist_filters=status__exact%3Dfailed" in page.context["release_url"]
    response = admin_client.post(page.context["release_url"], confirmation_form(page))

    assert response.status_code == 302
    assert response["Location"] == f"{reverse(CHANGELIST)}?status__exact=failed"


@pytest.mark.django_db
def test_release_needs_the_change_permission() -> None:
    record = make(key="k", status=Status.FAILED)
    client = viewer_client("view_idempotencyrecord")

    listing = client.get(reverse(CHANGELIST))
    assert listing.status_code == 200
    assert listing.context["action_form"] is None or "release" not in [
        name for name, _ in listing.context["action_form"].fields["action"].choices
    ]
    assert client.get(reverse(RELEASE), {"ids": record.pk}).status_code == 403
    form = {
        "ids": [record.pk],
        f"token-{record.pk}": record.owner_token,
        f"status-{record.pk}": "failed",
    }
    assert client.post(reverse(RELEASE), form).status_code == 403
    assert "Release…" not in client.get(change_url(record)).content.decode()
    assert row("k") is not None

    editor = User.objects.get(username="viewer")
    editor.user_permissions.add(Permission.objects.get(codename="change_idempotencyrecord"))
    assert client.post(reverse(RELEASE), form).status_code == 302
    assert row("k") is None


@pytest.mark.django_db
def test_release_refuses_more_than_a_page_at_once(admin_client: Client) -> None:
    IdempotencyRecord.objects.bulk_create(IdempotencyRecordFactory.build_batch(MAX_RELEASE + 1))

    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "release", "select_across": "1", "_selected_action": ["1"]},
        follow=True,
    )

    assert "at most 100 intents at a time" in " ".join(messages_of(response))
    assert IdempotencyRecord.objects.count() == MAX_RELEASE + 1


@pytest.mark.django_db
def test_release_of_a_record_already_gone_says_so(admin_client: Client) -> None:
    record = make(key="k", status=Status.FAILED)
    page = admin_client.get(reverse(RELEASE), {"ids": record.pk})
    IdempotencyRecord.objects.filter(pk=record.pk).delete()

    done = admin_client.post(reverse(RELEASE), confirmation_form(page), follow=True)

    assert "1 intent no longer exists." in messages_of(done)
    assert not LogEntry.objects.exists()


# -- the admin reads ONCEONLY_DATABASE ---------------------------------------------------


@pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)
def test_admin_lists_the_records_of_onceonly_database(
    backend: Backend, admin_client: Client
) -> None:
    check_lock("on_postgres").complete(1)
    make("default", key="on_default")

    listed = keys_listed(admin_client.get(reverse(CHANGELIST)))

    assert listed == {"on_postgres"}
    record = row("on_postgres", using=backend.alias)
    assert record is not None
    assert admin_client.get(change_url(record)).status_code == 200


def test_purge_task_is_registered_under_its_dotted_path() -> None:
    # Beat schedules name tasks; SPEC promises `django_onceonly.tasks.purge_expired`.
    pytest.importorskip("celery")
    from django_onceonly.tasks import purge_expired

    assert purge_expired.name == "django_onceonly.tasks.purge_expired"


def test_summary_json_round_trips() -> None:
    # as_dict() is what `onceonly_stats --json` prints: plain JSON types only.
    from django_onceonly.stats import Count, Summary

    summary = Summary(
        database="default",
        now=timezone.now(),
        window=dt.timedelta(hours=24),
        by_status={"completed": Count(3), "failed": Count(12_345, exact=False)},
        stuck=Count(0),
        expired=Count(1),
        duplicates_in_window=4,
        records_with_duplicates_in_window=2,
    )

    assert json.loads(json.dumps(summary.as_dict()))["total"] == {"value": 12_348, "exact": False}
    assert str(summary.total) == "about 12,000"


@pytest.mark.django_db
def test_release_with_a_tampered_status_releases_nothing_and_answers_normally(
    admin_client: Client,
) -> None:
    record = make(key="k", status=Status.FAILED)
    form = {
        "ids": [record.pk],
        f"token-{record.pk}": record.owner_token,
        f"status-{record.pk}": "deleted\x00",
    }

    response = admin_client.post(reverse(RELEASE), form)

    assert response.status_code == 302
    assert row("k") is not None
