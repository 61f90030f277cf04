"""RedisStore's audit trail: records reach ``IdempotencyRecord`` through ``sync_audit``.

The sync target is each database in turn (the upsert differs per vendor); the records
come from the shared test Redis under this run's key prefix.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_onceonly import check_lock
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import RedisStore, audit, get_store
from django_onceonly.stores.audit import SyncReport, _scan, _unmark, _write, sync_audit
from django_onceonly.stores.base import RECORD_FIELDS, Record
from django_onceonly.tasks import sync_redis_audit
from tests.conftest import delete_redis_test_keys

COMPARED = tuple(name for name in RECORD_FIELDS if name not in ("scope", "key"))


def database_params() -> list[Any]:
    params = []
    for alias in ("default", "postgres", "mariadb"):
        marks: list[Any] = [
            pytest.mark.django_db(transaction=True, databases=["default", alias]),
            pytest.mark.services("redis"),
        ]
        if alias != "default":
            marks.append(pytest.mark.services(alias))
        params.append(
            pytest.param(alias, marks=marks, id="sqlite" if alias == "default" else alias)
        )
    return params


@pytest.fixture(params=database_params())
def database(request: pytest.FixtureRequest, settings: Any) -> Iterator[str]:
    """The sync's target database; RedisStore on this run's test Redis keys."""
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = settings.REDIS_TEST_CACHE
    settings.ONCEONLY_DATABASE = request.param
    delete_redis_test_keys()
    yield request.param
    delete_redis_test_keys()


def rows(alias: str) -> dict[tuple[str, str], IdempotencyRecord]:
    return {(r.scope, r.key): r for r in IdempotencyRecord.objects.using(alias).all()}


def assert_row_matches(row: IdempotencyRecord, record: Record) -> None:
    for name in COMPARED:
        assert getattr(row, name) == getattr(record, name), name


def make_intents() -> list[tuple[str, str]]:
    sent = check_lock(
        "welcome_email_1",
        fingerprint="sha256:abc",
        metadata={"user_id": 1},
        task_name="app.send_welcome_email",
        task_id="task-1",
    )
    sent.complete({"message_id": "m-1", "items": [1, 2]})
    for _ in range(3):
        check_lock("welcome_email_1")
    check_lock("charge_order_7", scope="tenant-a", lease=600)
    check_lock("charge_order_7", scope="tenant-a")
    check_lock("sms_5").fail(ValueError("bad number"))
    check_lock("refund_3").fail(TimeoutError("provider timed out"), outcome_unknown=True)
    check_lock("null_result").complete(None)
    return [
        ("", "welcome_email_1"),
        ("tenant-a", "charge_order_7"),
        ("", "sms_5"),
        ("", "refund_3"),
        ("", "null_result"),
    ]


def test_sync_copies_every_record_as_the_store_has_it(database: str) -> None:
    names = make_intents()

    report = sync_audit()

    assert (report.copied, report.deleted, report.pending) == (len(names), 0, 0)
    copied = rows(database)
    assert set(copied) == set(names)
    store = get_store()
    for scope, key in names:
        record = store.get(scope, key)
        assert record is not None
        assert_row_matches(copied[(scope, key)], record)
    welcome = copied[("", "welcome_email_1")]
    assert welcome.status == "completed"
    assert welcome.result == {"message_id": "m-1", "items": [1, 2]}
    assert welcome.duplicates_blocked == 3
    assert copied[("tenant-a", "charge_order_7")].status == "in_progress"
    assert copied[("tenant-a", "charge_order_7")].duplicates_blocked == 1
    assert copied[("", "refund_3")].status == "unknown"


def test_later_changes_update_the_same_row(database: str) -> None:
    lock = check_lock("charge_order_7", lease=600)
    sync_audit()
    first = IdempotencyRecord.objects.using(database).get(key="charge_order_7")
    assert first.status == "in_progress"

    lock.complete({"charge_id": "ch_1"})
    check_lock("charge_order_7")
    report = sync_audit()

    assert report.copied == 1
    row = IdempotencyRecord.objects.using(database).get(key="charge_order_7")
    assert row.pk == first.pk
    record = get_store().get("", "charge_order_7")
    assert record is not None
    assert_row_matches(row, record)
    assert (row.status, row.result, row.duplicates_blocked) == (
        "completed",
        {"charge_id": "ch_1"},
        1,
    )


def test_released_records_leave_the_table_on_the_next_sync(database: str) -> None:
    released = check_lock("released")
    check_lock("force-released").fail("x")
    check_lock("kept").complete(1)
    sync_audit()
    assert len(rows(database)) == 3

    released.release()
    assert get_store().force_release("", "force-released")
    report = sync_audit()

    assert (report.copied, report.deleted) == (0, 2)
    assert set(rows(database)) == {("", "kept")}


def test_a_second_sync_finds_nothing_to_copy(database: str) -> None:
    make_intents()
    sync_audit()

    report = sync_audit()

    assert (report.copied, report.deleted, report.pending) == (0, 0, 0)


def test_a_record_that_changes_during_a_sync_is_copied_again(database: str) -> None:
    lock = check_lock("k", lease=600)
    store = get_store()
    assert isinstance(store, RedisStore)
    report = SyncReport()
    marks, _more = _scan(store, 1000)
    _write(store, marks, database, report)  # copies the record while in progress
    lock.complete("done")  # changed before the sync removes its mark
    _unmark(store, marks, report)

    assert report.pending == 1  # the newer mark stays
    assert IdempotencyRecord.objects.using(database).get(key="k").status == "in_progress"
    assert sync_audit().copied == 1
    assert IdempotencyRecord.objects.using(database).get(key="k").status == "completed"
    assert sync_audit().copied == 0


def test_a_sync_that_dies_before_removing_its_marks_loses_nothing(database: str) -> None:
    names = make_intents()
    store = get_store()
    assert isinstance(store, RedisStore)
    marks, _more = _scan(store, 1000)
    _write(store, marks, database, SyncReport())
    # ... and the process dies here, its marks still in Redis.
    check_lock("sms_5")  # one more duplicate meanwhile

    report = sync_audit()

    assert report.copied == len(names)
    row = IdempotencyRecord.objects.using(database).get(key="sms_5")
    assert row.duplicates_blocked == 1


def test_only_one_sync_works_at_a_time(database: str) -> None:
    check_lock("k").complete(1)
    store = get_store()
    assert isinstance(store, RedisStore)
    lock_key = store.make_key("onceonly:audit-sync-lock")
    store.connection.set(lock_key, "another sync", px=10_000)

    busy = sync_audit()

    assert busy.locked_out
    assert not rows(database)
    store.connection.delete(lock_key)
    assert sync_audit().copied == 1


def test_the_command_reports_what_it_copied(database: str) -> None:
    make_intents()
    check_lock("gone").release()
    out = StringIO()

    call_command("onceonly_sync", "--batch-size", "2", stdout=out)

    assert out.getvalue().strip() == "Copied 5 record(s), deleted 0."
    assert len(rows(database)) == 5


def test_the_beat_task_copies_like_the_command(database: str) -> None:
    make_intents()

    # Called as Celery beat would run it (eagerly here: the worker path is Celery's own).
    counts = sync_redis_audit.apply().get()

    assert counts == {"copied": 5, "deleted": 0, "pending": 0, "locked_out": False}
    assert len(rows(database)) == 5


@pytest.mark.django_db
def test_the_command_refuses_to_run_without_redis_store(settings: Any) -> None:
    settings.ONCEONLY_STORE = "django_onceonly.stores.DatabaseStore"

    with pytest.raises(CommandError, match="copies RedisStore records"):
        call_command("onceonly_sync", stdout=StringIO())


class QuietRedisStore(RedisStore):
    audit = False


@pytest.mark.services("redis")
def test_with_audit_off_nothing_is_marked_and_the_sync_refuses(settings: Any) -> None:
    settings.ONCEONLY_STORE = f"{__name__}.QuietRedisStore"
    settings.ONCEONLY_REDIS_CACHE = settings.REDIS_TEST_CACHE
    delete_redis_test_keys()
    try:
        check_lock("k").complete(1)
        check_lock("k")
        store = get_store()
        assert isinstance(store, QuietRedisStore)
        dirty = list(store.connection.scan_iter(match=settings.REDIS_TEST_PREFIX + "*:dirty"))
        assert dirty == []
        assert store.get("", "k") is not None
        with pytest.raises(ImproperlyConfigured, match="audit is off"):
            sync_audit()
    finally:
        delete_redis_test_keys()


def test_finished_records_stay_in_redis_a_little_past_their_expiry_for_the_sync(
    database: str,
) -> None:
    lock = check_lock("k", ttl=60)
    lock.complete(1)
    store = get_store()
    assert isinstance(store, RedisStore)

    remaining_ms = store.connection.pttl(store.keys("", "k").record)

    assert 60_000 < remaining_ms <= 60_000 + 300_000
    record = store.get("", "k")
    assert record is not None
    assert record.expires_at is not None
    assert record.expires_at - timezone.now() <= dt.timedelta(seconds=60)


def test_a_sync_that_outlives_its_lock_rolls_back_instead_of_overwriting_a_newer_copy(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sync A reads the record while in progress, then stalls past its lock's lease.
    # Meanwhile the owner completes and sync B copies "completed". A's older copy must
    # not win when A resumes.
    monkeypatch.setattr(audit, "LOCK_MS", 200)
    lock = check_lock("k", lease=600)
    real_copy = audit._copy
    stalled: list[SyncReport] = []

    def stall_first_copy(*args: Any) -> None:
        if not stalled:
            stalled.append(sync_b_report := SyncReport())
            time.sleep(0.4)  # past A's lease: nobody renewed it
            lock.complete("done")
            newer = sync_audit()
            sync_b_report.copied = newer.copied
        real_copy(*args)

    monkeypatch.setattr(audit, "_copy", stall_first_copy)

    report_a = sync_audit()

    assert stalled[0].copied == 1  # B took the lock A had lost and copied "completed"
    assert report_a.locked_out
    assert report_a.copied == 0  # A's batch was rolled back
    row = IdempotencyRecord.objects.using(database).get(key="k")
    assert (row.status, row.result) == ("completed", "done")
    assert sync_audit().copied == 0  # nothing left behind


def test_a_long_sync_renews_its_lock_so_no_second_sync_overlaps_it(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "LOCK_MS", 300)
    for n in range(4):
        check_lock(f"k{n}").complete(n)
    real_copy = audit._copy
    overlapping: list[SyncReport] = []

    def slow_copy(*args: Any) -> None:
        time.sleep(0.2)  # four batches: 0.8 s in all, well past one lease
        overlapping.append(sync_audit())
        real_copy(*args)

    monkeypatch.setattr(audit, "_copy", slow_copy)

    report = sync_audit(batch_size=1)

    assert (report.copied, report.locked_out) == (4, False)
    assert len(overlapping) == 4
    assert all(other.locked_out for other in overlapping)
    assert len(rows(database)) == 4
