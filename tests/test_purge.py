"""Purging expired records, and releasing one intent by hand.

Purge is about the database stores' table (Redis expires its keys itself), so those tests
run on each database; ``onceonly_release`` goes through the store and runs on every one.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.db.models.signals import post_delete
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_onceonly import LockLost, check_lock
from django_onceonly.management.commands import onceonly_release as release_command
from django_onceonly.models import IdempotencyRecord, Status
from django_onceonly.stores.database import close_connections
from django_onceonly.tasks import purge_expired
from tests.conftest import Backend, backend_params
from tests.factories import IdempotencyRecordFactory

on_each_database = pytest.mark.parametrize(
    "backend", backend_params("sqlite", "postgres", "mariadb"), indirect=True
)


def records(backend: Backend) -> Any:
    return IdempotencyRecord.objects.using(backend.alias)


def make(backend: Backend, count: int, **traits: Any) -> list[IdempotencyRecord]:
    built = IdempotencyRecordFactory.build_batch(count, **traits)
    return records(backend).bulk_create(built, batch_size=500)


def make_keepers(backend: Backend) -> set[str]:
    """Records purge must never touch; returns their keys."""
    now = timezone.now()
    kept = [
        *make(backend, 3),  # completed, expires tomorrow
        *make(backend, 2, running=True),  # in progress
        *make(backend, 2, status=Status.UNKNOWN, completed_at=now, expires_at=None),
        *make(backend, 2, status=Status.FAILED, expires_at=now + dt.timedelta(hours=1)),
        *make(backend, 1, expires_at=None),  # ONCEONLY_TTL = None: forever
    ]
    return {record.key for record in kept}


def delete_statements(backend: Backend, context: CaptureQueriesContext) -> int:
    return sum(1 for query in context.captured_queries if query["sql"].startswith("DELETE"))


@on_each_database
def test_purge_command_deletes_only_expired_records_in_batches(backend: Backend) -> None:
    make(backend, 2500, expired=True)
    kept = make_keepers(backend)
    out = StringIO()

    with CaptureQueriesContext(connections[backend.alias]) as queries:
        call_command("onceonly_purge", "--batch-size", "1000", stdout=out)

    assert out.getvalue() == "Deleted 2500 expired record(s).\n"
    assert set(records(backend).values_list("key", flat=True)) == kept
    # 1000 + 1000 + 500: one short DELETE per batch, never one long one.
    assert delete_statements(backend, queries) == 3


@on_each_database
def test_purge_dry_run_reports_the_count_and_deletes_nothing(backend: Backend) -> None:
    make(backend, 25, expired=True)
    kept = make_keepers(backend)
    out = StringIO()

    with CaptureQueriesContext(connections[backend.alias]) as queries:
        call_command("onceonly_purge", "--dry-run", stdout=out)

    assert out.getvalue() == "25 expired record(s) would be deleted.\n"
    assert records(backend).count() == 25 + len(kept)
    assert delete_statements(backend, queries) == 0


@on_each_database
def test_purge_with_nothing_expired_deletes_nothing(backend: Backend) -> None:
    kept = make_keepers(backend)
    out = StringIO()

    call_command("onceonly_purge", stdout=out)

    assert out.getvalue() == "Deleted 0 expired record(s).\n"
    assert set(records(backend).values_list("key", flat=True)) == kept


@on_each_database
def test_purge_rejects_a_batch_size_below_one_as_a_command_error(backend: Backend) -> None:
    make(backend, 3, expired=True)

    for size in ("0", "-5"):
        with pytest.raises(CommandError, match="--batch-size must be at least 1"):
            call_command("onceonly_purge", "--batch-size", size, stdout=StringIO())

    assert records(backend).count() == 3


@on_each_database
def test_purge_expired_function_and_task(backend: Backend) -> None:
    make(backend, 30, expired=True)
    kept = make_keepers(backend)

    assert purge_expired(batch_size=7, dry_run=True) == 30
    assert purge_expired(batch_size=7) == 30
    assert purge_expired() == 0
    assert set(records(backend).values_list("key", flat=True)) == kept


@on_each_database
def test_purge_removes_records_that_expired_through_the_api(backend: Backend) -> None:
    check_lock("short", ttl=0.01).complete("r")
    check_lock("long", ttl=3600).complete("r")
    check_lock("running")
    records(backend).filter(key="short").update(expires_at=timezone.now() - dt.timedelta(1))

    assert purge_expired() == 1

    assert backend.record("short") is None
    assert backend.record("long") is not None
    assert backend.record("running") is not None
    assert check_lock("short").locked


@pytest.mark.parametrize("backend", backend_params("postgres", "mariadb"), indirect=True)
def test_purge_touches_only_the_onceonly_database(backend: Backend) -> None:
    make(backend, 4, expired=True)
    IdempotencyRecord.objects.using("default").bulk_create(
        IdempotencyRecordFactory.build_batch(3, expired=True)
    )

    assert purge_expired() == 4

    assert records(backend).count() == 0
    assert IdempotencyRecord.objects.using("default").count() == 3


# How the purge races claims: trials x expired records, and the threads re-claiming them.
PURGE_RACE_TRIALS = {"sqlite": 2, "postgres": 4, "mariadb": 4}
PURGE_RACE_RECORDS = 2000
PURGE_RACE_CLAIMERS = 4


@pytest.mark.slow
@on_each_database
def test_purge_never_deletes_a_claim_taken_while_it_runs_even_with_a_delete_receiver(
    backend: Backend,
) -> None:
    # An app listening to post_delete for every model (audit logs, cache invalidation)
    # turns QuerySet.delete() into a select, then a delete by primary key: a record
    # re-claimed in between lost its live claim. The purge's DELETE carries the
    # "still expired" condition itself.
    def audit(sender: Any, instance: Any, **kwargs: Any) -> None:
        pass

    post_delete.connect(audit, weak=False, dispatch_uid="test_purge_audit")
    trials = PURGE_RACE_TRIALS[backend.name]
    claimed_during_purge = purged = 0
    lost: list[str] = []
    try:
        for trial in range(trials):
            during, deleted, lost_keys = _race_purge_and_claims(backend, trial)
            claimed_during_purge += during
            purged += deleted
            lost += lost_keys
    finally:
        post_delete.disconnect(dispatch_uid="test_purge_audit")
    print(
        f"\n{backend.name}: {trials} trials x {PURGE_RACE_RECORDS} expired records, "
        f"{PURGE_RACE_CLAIMERS} claimer threads: {claimed_during_purge} claims taken while "
        f"the purge ran, {purged} records purged, {len(lost)} claims lost"
    )
    assert not lost, f"claims lost their record to the purge: {lost[:10]}"
    # The race happened: claims landed while batches were being deleted.
    assert claimed_during_purge > 0


def _race_purge_and_claims(backend: Backend, trial: int) -> tuple[int, int, list[str]]:
    """Purge expired records while threads claim the same keys in expiry order.

    Returns how many claims were taken while the purge ran, how many records it
    deleted, and the keys whose claim lost its record.
    """
    now = timezone.now()
    keys = [f"purge-race-{trial}-{n:05d}" for n in range(PURGE_RACE_RECORDS)]
    expired = [
        IdempotencyRecordFactory.build(
            key=key,
            created_at=now - dt.timedelta(days=2),
            expires_at=now - dt.timedelta(days=1, seconds=PURGE_RACE_RECORDS - n),
        )
        for n, key in enumerate(keys)
    ]
    records(backend).bulk_create(expired, batch_size=500)
    start = threading.Barrier(PURGE_RACE_CLAIMERS + 1)
    purging = threading.Event()
    guard = threading.Lock()
    tokens: dict[str, str] = {}
    during: list[bool] = []
    deleted: list[int] = []
    crashes: list[BaseException] = []

    def purge() -> None:
        try:
            start.wait(timeout=60)
            purging.set()
            deleted.append(records(backend).purge_expired(batch_size=50))
        except BaseException as exc:
            crashes.append(exc)
        finally:
            purging.clear()
            connections.close_all()
            close_connections()

    def claim(offset: int) -> None:
        try:
            start.wait(timeout=60)
            # Every claimer walks the keys in expiry order, as the purge does, so that
            # the claims meet the batches being deleted.
            for key in keys[offset::PURGE_RACE_CLAIMERS]:
                lock = check_lock(key, lease=600)
                assert lock.locked, (key, lock.record_status)
                with guard:
                    tokens[key] = str(lock.token)
                    during.append(purging.is_set())
        except BaseException as exc:
            start.abort()
            crashes.append(exc)
        finally:
            connections.close_all()
            close_connections()

    threads = [threading.Thread(target=purge, name="purge")] + [
        threading.Thread(target=claim, args=(n,), name=f"claimer-{n}")
        for n in range(PURGE_RACE_CLAIMERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not crashes, f"threads crashed: {crashes!r}"
    assert len(tokens) == len(keys)
    kept = dict(
        records(backend)
        .filter(key__in=keys, status=Status.IN_PROGRESS)
        .values_list("key", "owner_token")
    )
    lost = sorted(key for key, token in tokens.items() if kept.get(key) != token)
    records(backend).filter(key__in=keys).delete()
    return sum(during), deleted[0], lost


# -- onceonly_release --------------------------------------------------------------------


def test_release_command_shows_then_frees_a_blocked_intent(backend: Backend) -> None:
    check_lock("charge_9", task_name="billing.charge", task_id="t-1").fail("card declined")
    assert check_lock("charge_9").record_status == "failed"
    record = backend.record("charge_9")
    assert record is not None
    out = StringIO()

    call_command("onceonly_release", "charge_9", stdout=out)

    lines = out.getvalue().splitlines()
    assert lines[0] == "Key 'charge_9' (scope '')"
    assert "  status:             failed" in lines
    assert f"  owner token:        {record.owner_token[:8]}…" in lines
    assert "  task:               billing.charge (t-1)" in lines
    assert "  error:              card declined" in lines
    assert "  duplicates blocked: 1" in lines
    assert lines[-1] == "Released 'charge_9' (scope '')."
    assert backend.record("charge_9") is None
    assert check_lock("charge_9").locked


def test_release_command_with_scope_touches_only_that_scope(backend: Backend) -> None:
    check_lock("charge_9", scope="tenant-a").fail("x", outcome_unknown=True)
    check_lock("charge_9", scope="tenant-b").complete("b")
    check_lock("charge_9").complete("unscoped")
    out = StringIO()

    call_command("onceonly_release", "charge_9", "--scope", "tenant-a", stdout=out)

    assert "  status:             unknown" in out.getvalue().splitlines()
    assert out.getvalue().endswith("Released 'charge_9' (scope 'tenant-a').\n")
    assert backend.record("charge_9", scope="tenant-a") is None
    assert check_lock("charge_9", scope="tenant-b").result == "b"
    assert check_lock("charge_9").result == "unscoped"


def test_release_command_refuses_a_live_lease_without_force(backend: Backend) -> None:
    owner = check_lock("charge_9", lease=600)
    out = StringIO()

    with pytest.raises(CommandError, match=r"Its lease is live.*pass --force"):
        call_command("onceonly_release", "charge_9", stdout=out)

    assert "  lease:              live until " in out.getvalue()
    assert "Released" not in out.getvalue()
    owner.complete("sent once")  # still the owner's
    assert check_lock("charge_9").result == "sent once"


def test_release_command_frees_a_running_claim_with_force(backend: Backend) -> None:
    owner = check_lock("charge_9", lease=600)

    call_command("onceonly_release", "charge_9", "--force", stdout=StringIO())

    assert backend.record("charge_9") is None
    assert check_lock("charge_9").locked
    # The old owner is fenced off: it cannot overwrite the new claim.
    with pytest.raises(LockLost, match="no longer holds it"):
        owner.complete("late")


def test_release_command_frees_a_stuck_claim_without_force(backend: Backend) -> None:
    check_lock("charge_9", lease=0.05)
    time.sleep(0.1)
    out = StringIO()

    call_command("onceonly_release", "charge_9", stdout=out)

    assert "  lease:              ended at " in out.getvalue()
    assert backend.record("charge_9") is None


def test_release_command_leaves_a_record_that_changes_after_it_was_shown(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the record the command shows and its release, a retry takes the key
    # over: the release is one atomic step on the version shown, so the retry keeps it.
    check_lock("charge_9").fail("declined")
    store = backend.store
    retries: list[Any] = []

    class TakenOverAfterReading:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def get(self, scope: str, key: str) -> Any:
            shown = store.get(scope, key)
            store.force_release(scope, key)
            retries.append(check_lock(key, scope=scope, lease=600))
            return shown

    monkeypatch.setattr(release_command, "get_store", TakenOverAfterReading)

    with pytest.raises(CommandError, match="changed while being released"):
        call_command("onceonly_release", "charge_9", "--force", stdout=StringIO())

    current = backend.record("charge_9")
    assert current is not None
    assert current.owner_token == retries[0].token
    retries[0].complete("charged once")


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
def test_release_command_deletes_a_damaged_record_it_cannot_show(backend: Backend) -> None:
    # SQLite keeps whatever text a hand-made UPDATE writes; the store cannot read it
    # back (DamagedRecord), no owner can finish it, and only a deletion unblocks it.
    check_lock("charge_9", lease=600)
    with connections[backend.alias].cursor() as cursor:
        cursor.execute(
            "UPDATE django_onceonly_idempotencyrecord SET duplicates_blocked = 'many' WHERE key = %s",
            ["charge_9"],
        )
    out = StringIO()

    call_command("onceonly_release", "charge_9", stdout=out)

    first, last = out.getvalue().splitlines()
    assert first.startswith("Key 'charge_9' (scope ''): the stored record is damaged (")
    assert last == "Released 'charge_9' (scope '')."
    assert check_lock("charge_9").locked


def test_release_command_for_a_missing_key_is_an_error(backend: Backend) -> None:
    check_lock("charge_9", scope="tenant-a")

    with pytest.raises(CommandError, match="No record for key 'charge_9' in scope ''"):
        call_command("onceonly_release", "charge_9", stdout=StringIO())

    assert backend.record("charge_9", scope="tenant-a") is not None


def test_release_command_reports_an_invalid_key_as_a_command_error(backend: Backend) -> None:
    with pytest.raises(CommandError, match="key is 256 characters long; the limit is 255"):
        call_command("onceonly_release", "k" * 256, stdout=StringIO())


@pytest.mark.django_db
def test_purge_also_deletes_published_outbox_messages_and_keeps_pending_ones() -> None:
    from django.utils import timezone

    from django_onceonly.models import OutboxMessage

    now = timezone.now()
    OutboxMessage.objects.bulk_create(
        [
            OutboxMessage(task_name="t", task_id=f"p{n}", payload="[]", published_at=now)
            for n in range(3)
        ]
        + [OutboxMessage(task_name="t", task_id="pending", payload="[]")]
    )
    out = StringIO()

    call_command("onceonly_purge", stdout=out)

    assert out.getvalue() == (
        "Deleted 0 expired record(s).\nDeleted 3 published outbox message(s).\n"
    )
    assert list(OutboxMessage.objects.values_list("task_id", flat=True)) == ["pending"]
