"""Claims and the caller's ``transaction.atomic()``.

By default a claim commits on its own: the email went out, so a caller whose
transaction rolls back must not un-claim it. ``transactional=True`` makes the claim part
of the caller's transaction instead, which gives exactly-once for work that is itself a
database write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connections, transaction

from django_onceonly import StoreUnavailable, check_lock
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores.database import close_connections
from tests.conftest import BACKENDS, Backend, backend_params

DATABASE_BACKENDS = ("sqlite", "postgres", "mariadb")
SERVER_BACKENDS = ("postgres", "mariadb")


def in_test_transaction_params(*names: str) -> list[Any]:
    """Like ``backend_params`` but inside the test's transaction (``TestCase`` style)."""
    params = []
    for name in names:
        _, alias, service = BACKENDS[name]
        marks: list[Any] = [pytest.mark.django_db(databases=["default", alias])]
        if service:
            marks.append(pytest.mark.services(service))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


class Rollback(Exception):
    """Raised to roll the caller's transaction back."""


def committed_rows(alias: str, key: str) -> int:
    """How many records for ``key`` another connection sees (committed data only)."""
    conn = connections.create_connection(alias)
    try:
        with conn.cursor() as cursor:
            table = conn.ops.quote_name(IdempotencyRecord._meta.db_table)
            column = conn.ops.quote_name("key")
            cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = %s", [key])
            row = cursor.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


# -- by default the claim commits on its own ---------------------------------------------


@pytest.mark.parametrize("backend", backend_params(*DATABASE_BACKENDS), indirect=True)
def test_claim_survives_the_callers_rollback_by_default(backend: Backend) -> None:
    seen: dict[str, Any] = {}

    def send_then_fail() -> None:
        with transaction.atomic(using=backend.alias):
            seen["lock"] = check_lock("welcome_email_1")
            # Committed already: another connection sees it before the caller decides.
            seen["committed"] = committed_rows(backend.alias, "welcome_email_1")
            raise Rollback

    with pytest.raises(Rollback):
        send_then_fail()

    lock = seen["lock"]
    assert lock.locked
    assert seen["committed"] == 1
    record = backend.record("welcome_email_1")
    assert record is not None
    assert record.status == "in_progress"
    assert record.owner_token == lock.token
    assert check_lock("welcome_email_1").duplicate
    lock.complete("sent")
    assert check_lock("welcome_email_1").result == "sent"


@pytest.mark.parametrize("backend", backend_params(*DATABASE_BACKENDS), indirect=True)
def test_completed_claim_survives_the_callers_rollback_by_default(backend: Backend) -> None:
    def send_then_fail() -> None:
        with transaction.atomic(using=backend.alias):
            with check_lock("welcome_email_1") as lock:
                lock.complete({"message_id": "m-1"})
            Group.objects.using(backend.alias).create(name="rolled back")
            raise Rollback

    with pytest.raises(Rollback):
        send_then_fail()

    assert not Group.objects.using(backend.alias).filter(name="rolled back").exists()
    replay = check_lock("welcome_email_1")
    assert replay.duplicate
    assert replay.result == {"message_id": "m-1"}


@pytest.mark.parametrize("backend", backend_params(*SERVER_BACKENDS), indirect=True)
def test_claim_after_the_caller_wrote_still_commits_on_its_own(backend: Backend) -> None:
    def write_send_then_fail() -> None:
        with transaction.atomic(using=backend.alias):
            Group.objects.using(backend.alias).create(name="written first")
            check_lock("welcome_email_1").complete("sent")
            raise Rollback

    with pytest.raises(Rollback):
        write_send_then_fail()

    assert not Group.objects.using(backend.alias).exists()
    assert check_lock("welcome_email_1").result == "sent"


@contextmanager
def sqlite_busy_timeout(alias: str, seconds: float) -> Iterator[None]:
    options = connections[alias].settings_dict["OPTIONS"]
    saved = options.get("timeout")
    options["timeout"] = seconds
    close_connections()  # the claim's own connection is reopened with the new timeout
    try:
        yield
    finally:
        close_connections()
        options["timeout"] = saved


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
def test_sqlite_cannot_commit_a_claim_on_its_own_after_the_caller_wrote(
    backend: Backend,
) -> None:
    # SQLite has one writer at a time. Once the caller's transaction has written, the
    # claim's own connection waits for the caller (up to the busy timeout, 30 s in these
    # settings, 5 s by default) and fails with the way out: nothing is claimed and nothing
    # runs. Claim before writing, or use transactional=True.
    with sqlite_busy_timeout(backend.alias, 0.2), transaction.atomic(using=backend.alias):
        Group.objects.using(backend.alias).create(name="written first")
        with pytest.raises(
            StoreUnavailable,
            match=r"database is locked \(SQLite allows one writer: .*call check_lock\(\) "
            r"before writing, or pass transactional=True",
        ):
            check_lock("welcome_email_1")
        assert committed_rows(backend.alias, "welcome_email_1") == 0
        lock = check_lock("welcome_email_1", transactional=True)
        assert lock.locked
        lock.complete("sent")

    assert check_lock("welcome_email_1").result == "sent"


# -- transactional=True ------------------------------------------------------------------


@pytest.mark.parametrize("backend", backend_params(*DATABASE_BACKENDS), indirect=True)
def test_transactional_claim_rolls_back_with_the_caller(backend: Backend) -> None:
    seen: dict[str, Any] = {}

    def grant_then_fail() -> None:
        with transaction.atomic(using=backend.alias):
            lock = check_lock("grant_credits_1", transactional=True)
            seen["locked"] = lock.locked
            Group.objects.using(backend.alias).create(name="credits granted")
            lock.complete("granted")
            seen["committed"] = committed_rows(backend.alias, "grant_credits_1")
            raise Rollback

    with pytest.raises(Rollback):
        grant_then_fail()

    assert seen == {"locked": True, "committed": 0}
    assert backend.record("grant_credits_1") is None
    assert not Group.objects.using(backend.alias).exists()
    assert check_lock("grant_credits_1").locked


@pytest.mark.parametrize("backend", backend_params(*DATABASE_BACKENDS), indirect=True)
def test_transactional_claim_commits_with_the_caller(backend: Backend) -> None:
    with transaction.atomic(using=backend.alias):
        with check_lock("grant_credits_1", transactional=True) as lock:
            Group.objects.using(backend.alias).create(name="credits granted")
            lock.complete("granted")
        # Until the caller commits, nobody else sees the claim.
        assert committed_rows(backend.alias, "grant_credits_1") == 0

    assert committed_rows(backend.alias, "grant_credits_1") == 1
    record = backend.record("grant_credits_1")
    assert record is not None
    assert record.status == "completed"
    assert record.result == "granted"
    assert Group.objects.using(backend.alias).filter(name="credits granted").count() == 1


@pytest.mark.parametrize("backend", backend_params(*DATABASE_BACKENDS), indirect=True)
def test_transactional_work_that_fails_leaves_neither_claim_nor_write(backend: Backend) -> None:
    ledger_up = [False, True, True]  # the first attempt fails half-way

    def grant_credits() -> None:
        up = ledger_up.pop(0)
        with (
            transaction.atomic(using=backend.alias),
            check_lock("grant_credits_1", transactional=True) as lock,
        ):
            if lock.duplicate:
                return
            Group.objects.using(backend.alias).create(name="credits granted")
            if not up:
                raise ConnectionError("ledger service down")
            lock.complete("granted")

    with pytest.raises(ConnectionError):
        grant_credits()
    assert backend.record("grant_credits_1") is None
    assert not Group.objects.using(backend.alias).exists()
    grant_credits()
    grant_credits()  # a duplicate now: the block does nothing

    assert Group.objects.using(backend.alias).filter(name="credits granted").count() == 1
    record = backend.record("grant_credits_1")
    assert record is not None
    assert record.result == "granted"
    assert record.duplicates_blocked == 1


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
@pytest.mark.parametrize("backend", backend_params(*DATABASE_BACKENDS), indirect=True)
def test_concurrent_claim_follows_the_transactional_owners_outcome(
    backend: Backend, outcome: str
) -> None:
    answers: list[Any] = []

    def other_caller() -> None:
        try:
            lock = check_lock("grant_credits_1")
            answers.append((lock.status, lock.record_status, lock.result))
        except Exception as exc:
            answers.append(exc)
        finally:
            connections.close_all()
            close_connections()

    def owner() -> threading.Thread:
        with transaction.atomic(using=backend.alias):
            check_lock("grant_credits_1", transactional=True).complete("granted")
            thread = threading.Thread(target=other_caller)
            thread.start()
            # Give the other caller time to reach the row: it must wait for this
            # transaction. The answer below holds whether it got there first or not.
            time.sleep(0.2)
            if outcome == "rollback":
                raise Rollback(thread)
        return thread

    if outcome == "commit":
        thread = owner()
    else:
        with pytest.raises(Rollback) as rolled_back:
            owner()
        thread = rolled_back.value.args[0]
    thread.join(timeout=60)

    assert not thread.is_alive()
    if outcome == "commit":
        assert answers == [("duplicate", "completed", "granted")]
    else:
        assert answers == [("locked", "in_progress", None)]


# -- inside a TestCase-style test transaction --------------------------------------------


@pytest.mark.parametrize("backend", in_test_transaction_params(*DATABASE_BACKENDS), indirect=True)
def test_claim_in_a_testcase_test_is_part_of_the_test_transaction(backend: Backend) -> None:
    # pytest-django's `django_db` (without transaction=True) wraps the test in Django's
    # TestCase atomic blocks. Those do not count as the caller's transaction: the claim
    # is written on the test's connection and rolled back with the test, so tests of
    # code using check_lock stay isolated.
    lock = check_lock("welcome_email_1")
    lock.complete("sent")

    assert check_lock("welcome_email_1").result == "sent"
    assert IdempotencyRecord.objects.using(backend.alias).filter(key="welcome_email_1").exists()
    assert committed_rows(backend.alias, "welcome_email_1") == 0


@pytest.mark.parametrize("backend", in_test_transaction_params(*DATABASE_BACKENDS), indirect=True)
def test_claim_in_an_atomic_block_of_a_testcase_test_stays_in_the_test_transaction(
    backend: Backend,
) -> None:
    # Inside a TestCase the code's own atomic() is nested in the test's transaction, and
    # the claim joins it rather than committing on a second connection: the test stays
    # isolated (nothing outlives it) and the test database can be dropped afterwards.
    with transaction.atomic(using=backend.alias):
        check_lock("welcome_email_1").complete("sent")

    assert check_lock("welcome_email_1").result == "sent"
    assert committed_rows(backend.alias, "welcome_email_1") == 0


@pytest.mark.parametrize("backend", in_test_transaction_params(*DATABASE_BACKENDS), indirect=True)
def test_transactional_claim_in_a_testcase_test_stays_in_the_test_transaction(
    backend: Backend,
) -> None:
    with transaction.atomic(using=backend.alias):
        check_lock("welcome_email_1", transactional=True).complete("sent")

    assert check_lock("welcome_email_1").result == "sent"
    assert committed_rows(backend.alias, "welcome_email_1") == 0


@pytest.mark.parametrize("backend", in_test_transaction_params(*DATABASE_BACKENDS), indirect=True)
def test_duplicates_in_a_testcase_test_are_counted_at_once(backend: Backend) -> None:
    # The flusher thread's connection cannot see the test's uncommitted records, so under
    # a TestCase the store writes each count in the test's transaction, at once.
    check_lock("welcome_email_1").complete("sent")
    for _ in range(3):
        assert check_lock("welcome_email_1").duplicate

    row = IdempotencyRecord.objects.using(backend.alias).get(key="welcome_email_1")
    assert row.duplicates_blocked == 3
    assert row.last_duplicate_at is not None
    assert committed_rows(backend.alias, "welcome_email_1") == 0
