"""Duplicate counts: buffered per process, written in batches, never on a claim's path.

A duplicate claim only reads; ``stores/duplicates.py`` counts it in the process's buffer
and writes the counts later (at most once a second, at exit, or on ``flush()``). These
tests prove that every count arrives, from threads and from processes that only exit;
that a flush that cannot write (a locked record, a database that is busy, a Redis that
is down) neither fails nor delays a claim, and its counts arrive once the store takes
them; and that a flush never recreates a record or counts against a newer one.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_onceonly import check_lock
from django_onceonly.stores import ClaimRequest, DatabaseStore, duplicates, get_store
from django_onceonly.stores.database import close_connections
from tests.celery.fixtures import wait_until
from tests.conftest import Backend, backend_params
from tests.redis_server import RedisServer, needs_redis_server, use_as_store

THREADS = 8
PROCESSES = 4
PER_RACER = 25  # duplicates each thread or process claims on each key
KEYS = 3


def completed_keys(label: str) -> list[str]:
    keys = [f"dup-{label}-{n}" for n in range(KEYS)]
    for key in keys:
        check_lock(key).complete({"n": key})
    return keys


def claim_duplicates(keys: list[str]) -> None:
    for _ in range(PER_RACER):
        for key in keys:
            assert check_lock(key).duplicate


def counts(backend: Backend, keys: list[str]) -> list[int]:
    counted = []
    for key in keys:
        record = backend.record(key)  # flushes this process's buffer first
        assert record is not None
        counted.append(record.duplicates_blocked)
    return counted


def test_every_duplicate_claimed_in_threads_is_counted(backend: Backend) -> None:
    keys = completed_keys("threads")
    errors: list[BaseException] = []

    def racer() -> None:
        try:
            claim_duplicates(keys)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()
            close_connections()

    threads = [threading.Thread(target=racer) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    print(f"\n{backend.name}: {THREADS} threads x {PER_RACER} duplicates x {KEYS} keys")
    assert counts(backend, keys) == [THREADS * PER_RACER] * KEYS


def _process_racer(keys: list[str]) -> None:
    # No flush here: the process's exit writes what it buffered.
    claim_duplicates(keys)


def test_every_duplicate_claimed_in_processes_is_counted_when_they_exit(
    backend: Backend,
) -> None:
    keys = completed_keys("processes")
    connections.close_all()  # a forked child must not share the parent's sockets
    close_connections()
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_process_racer, args=(keys,)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)

    assert [process.exitcode for process in processes] == [0] * PROCESSES
    print(f"\n{backend.name}: {PROCESSES} processes x {PER_RACER} duplicates x {KEYS} keys")
    assert counts(backend, keys) == [PROCESSES * PER_RACER] * KEYS


def test_a_flush_never_recreates_a_released_record(backend: Backend) -> None:
    check_lock("gone").complete("r")
    record = backend.record("gone")
    assert record is not None
    assert check_lock("gone").duplicate
    get_store().force_release("", "gone")
    # Counts still waiting for the record, as a flush may find them after a release.
    duplicates.add(get_store(), "", "gone", record.created_at, timezone.now())

    assert duplicates.flush()

    assert backend.record("gone") is None


def test_a_flush_never_counts_against_a_record_claimed_afresh_since(backend: Backend) -> None:
    check_lock("again", ttl=0.05).complete("first")
    first = backend.record("again")
    assert first is not None
    time.sleep(0.1)  # past the ttl: the next claim takes the key over as new
    fresh = check_lock("again")
    assert fresh.locked
    # A duplicate of the first record whose count is written only now.
    duplicates.add(get_store(), "", "again", first.created_at, timezone.now())

    assert duplicates.flush()

    record = backend.record("again")
    assert record is not None
    assert record.owner_token == fresh.token
    assert (record.duplicates_blocked, record.last_duplicate_at) == (0, None)


# -- a flush that cannot write ----------------------------------------------------------

WAITERS = {
    "postgres": "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'",
    "mariadb": "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'",
}
# A claim that tried to write the locked record would fail fast instead of waiting.
NO_WAITING = {
    "postgres": ("SET lock_timeout = '2s'", "SET lock_timeout = DEFAULT"),
    "mariadb": (
        "SET SESSION innodb_lock_wait_timeout = 2",
        "SET SESSION innodb_lock_wait_timeout = DEFAULT",
    ),
}


def flush_then_close() -> None:
    duplicates.flush()
    connections.close_all()


@pytest.mark.parametrize("backend", backend_params("postgres", "mariadb"), indirect=True)
def test_a_flush_waiting_on_a_locked_record_never_delays_a_claim(backend: Backend) -> None:
    check_lock("locked").complete("r")
    locker = connections.create_connection(backend.alias)
    flusher: threading.Thread | None = None
    try:
        locker.set_autocommit(False)
        with locker.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM django_onceonly_idempotencyrecord WHERE "
                + locker.ops.quote_name("key")
                + " = %s FOR UPDATE",
                ["locked"],
            )
        with connections[backend.alias].cursor() as cursor:
            cursor.execute(NO_WAITING[backend.name][0])
        for _ in range(10):
            assert check_lock("locked").duplicate
        flusher = threading.Thread(target=flush_then_close)
        flusher.start()

        def waiting() -> bool:
            with connections[backend.alias].cursor() as cursor:
                cursor.execute(WAITERS[backend.name])
                return bool(cursor.fetchone()[0])

        wait_until(waiting, "the flush to wait for the record's lock")
        for _ in range(10):
            assert check_lock("locked").duplicate  # neither waits nor fails

        assert flusher.is_alive()  # still waiting: the claims did not wait for it
    finally:
        locker.rollback()
        locker.close()
        if flusher is not None:
            flusher.join()
        with connections[backend.alias].cursor() as cursor:
            cursor.execute(NO_WAITING[backend.name][1])
    record = backend.record("locked")
    assert record is not None
    assert record.duplicates_blocked == 20


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
def test_a_flush_that_finds_sqlite_busy_fails_quietly_and_its_counts_arrive_later(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    check_lock("busy").complete("r")
    path = connections[backend.alias].settings_dict["NAME"]
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process's write transaction
        for _ in range(5):
            assert check_lock("busy").duplicate  # a read: SQLite still serves it
        assert duplicates.flush() is False  # "database is locked": kept, not raised
        for _ in range(5):
            assert check_lock("busy").duplicate
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert "kept" in caplog.text or "keeps" in caplog.text

    record = backend.record("busy")
    assert record is not None
    assert record.duplicates_blocked == 10


@pytest.fixture
def own_redis(tmp_path: Path, settings: Any) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, "aof-always").start()
    use_as_store(server, settings)
    yield server
    duplicates.flush()
    server.stop(signal.SIGKILL)


@needs_redis_server
def test_a_flush_while_redis_is_down_keeps_the_counts_until_it_is_back(
    own_redis: RedisServer,
) -> None:
    store = get_store()
    check_lock("outage").complete("r")
    for _ in range(5):
        assert check_lock("outage").duplicate
    record = store.get("", "outage")
    assert record is not None

    own_redis.stop(signal.SIGKILL)
    # Duplicates blocked just before the outage, their counts not written yet.
    for _ in range(3):
        duplicates.add(store, "", "outage", record.created_at, timezone.now())
    assert duplicates.flush() is False  # nothing raised, nothing lost

    own_redis.start()
    assert duplicates.flush()
    after = store.get("", "outage")
    assert after is not None
    assert after.duplicates_blocked == 8
    assert after.last_duplicate_at is not None
    assert record.created_at is not None
    assert after.last_duplicate_at > record.created_at


# -- what a claim sends ------------------------------------------------------------------


@pytest.mark.parametrize("backend", backend_params("sqlite", "postgres", "mariadb"), indirect=True)
def test_a_duplicate_check_is_one_select_once_the_process_has_seen_the_key_taken(
    backend: Backend,
) -> None:
    connection = connections[backend.alias]
    with CaptureQueriesContext(connection) as new_key:
        check_lock("seen").complete("r")
    with CaptureQueriesContext(connection) as duplicate:
        assert check_lock("seen").duplicate
    fresh = DatabaseStore(backend.alias)  # another process: it has never seen the key
    now = timezone.now()
    request = ClaimRequest(
        scope="",
        key="seen",
        token="t" * 32,
        now=now,
        lease_expires_at=now + dt.timedelta(seconds=60),
        after_lease="reclaim",
    )
    with CaptureQueriesContext(connection) as first_sight:
        assert not fresh.claim(request).acquired

    # A new key: one INSERT ... RETURNING (then the completion's UPDATE).
    assert [q["sql"].split()[0] for q in new_key.captured_queries] == ["INSERT", "UPDATE"]
    # A duplicate: one SELECT, nothing written.
    assert [q["sql"].split()[0] for q in duplicate.captured_queries] == ["SELECT"]
    # A process meeting the key taken for the first time: the insert (which inserts
    # nothing) and the read; MariaDB's no-op ON DUPLICATE KEY UPDATE returns the row.
    first = ["INSERT"] if backend.name == "mariadb" else ["INSERT", "SELECT"]
    assert [q["sql"].split()[0] for q in first_sight.captured_queries] == first


@needs_redis_server
def test_counts_past_the_cap_are_dropped_with_a_warning_while_the_store_is_down(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert duplicates.flush()  # nothing else waiting in this process's buffer
    monkeypatch.setattr(duplicates, "MAX_PENDING", 3)
    store = get_store()
    keys = [f"capped-{n}" for n in range(5)]
    created = {}
    for key in keys:
        check_lock(key).complete("r")
        record = store.get("", key)
        assert record is not None
        created[key] = record.created_at
    own_redis.stop(signal.SIGKILL)

    for key in keys:  # five records waiting, room for three
        duplicates.add(store, "", key, created[key], timezone.now())
    assert duplicates.flush() is False

    own_redis.start()
    assert duplicates.flush()
    counted = {key: store.get("", key).duplicates_blocked for key in keys}  # type: ignore[union-attr]
    assert sorted(counted.values()) == [0, 0, 1, 1, 1]
    assert "dropped 2 duplicate count(s)" in caplog.text


@pytest.mark.parametrize("backend", backend_params("redis"), indirect=True)
def test_discard_drops_the_pending_counts_unwritten(backend: Backend) -> None:
    check_lock("dropped").complete("r")
    assert check_lock("dropped").duplicate
    assert check_lock("dropped").duplicate

    assert duplicates.discard() == 1  # one record had counts waiting

    assert duplicates.flush()
    record = get_store().get("", "dropped")
    assert record is not None
    assert record.duplicates_blocked == 0
