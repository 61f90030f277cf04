"""What a Redis restart does to the records: it depends on Redis's persistence settings.

Each test starts its own redis-server (tests/redis_server.py) with one persistence
setting, claims and completes keys through RedisStore, restarts the server on the same
directory, and looks at what a retry sees. A record that did not survive means the
retry is ``locked``: the email would be sent again.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from django_onceonly import check_lock
from django_onceonly.locks import Lock
from django_onceonly.stores import duplicates, get_store
from tests.redis_server import RedisServer, needs_redis_server, use_as_store

pytestmark = needs_redis_server

RECORDS = 50


@pytest.fixture
def use(settings: Any) -> Callable[[RedisServer], None]:
    """Point RedisStore at a server of the test's own."""

    def point(server: RedisServer) -> None:
        use_as_store(server, settings)

    return point


def send_welcome_emails(prefix: str, count: int = RECORDS) -> dict[str, dict[str, int]]:
    """Complete ``count`` intents, each then blocked once as a duplicate."""
    sent = {f"{prefix}-{n}": {"message_id": n} for n in range(count)}
    for key, result in sent.items():
        with check_lock(key) as lock:
            assert lock.locked
            lock.complete(result)
        assert check_lock(key).duplicate
    return sent


def survivors(sent: dict[str, dict[str, int]]) -> list[str]:
    """The keys a retry now sees as done (the rest would run again)."""
    survived = []
    for key, result in sent.items():
        retry = check_lock(key)
        if retry.duplicate:
            assert retry.record_status == "completed"
            assert retry.result == result
            survived.append(key)
        else:
            retry.release()
    duplicates.flush()  # their counts, while this server is up (the test stops it)
    return survived


@pytest.mark.parametrize(
    ("persistence", "how"),
    [
        ("aof-always", signal.SIGKILL),
        ("aof-always", signal.SIGTERM),
        ("aof-everysec", signal.SIGKILL),
    ],
    ids=["aof-always-crash", "aof-always-shutdown", "aof-everysec-crash"],
)
def test_aof_keeps_every_acknowledged_record_across_a_restart(
    tmp_path: Path, use: Callable[[RedisServer], None], persistence: str, how: signal.Signals
) -> None:
    server = RedisServer(tmp_path, persistence).start()
    use(server)
    try:
        sent = send_welcome_emails("welcome")
        running: Lock = check_lock("charge-running", lease=600)
        check_lock("charge-failed").fail("card declined")

        server.stop(how)
        server.start()

        survived = survivors(sent)
        print(
            f"\n{persistence}, {how.name}: {len(survived)} of {len(sent)} completed records survived"
        )
        assert len(survived) == len(sent)
        record = get_store().get("", "welcome-0")
        assert record is not None
        # the duplicate counted before the restart, and the one counted just now
        assert record.duplicates_blocked == 2
        still_running = check_lock("charge-running")
        assert still_running.duplicate
        assert still_running.record_status == "in_progress"
        # The owner that was running through the restart still owns its claim.
        running.complete("charged")
        assert check_lock("charge-running").result == "charged"
        assert check_lock("charge-failed").record_status == "failed"
    finally:
        server.stop(signal.SIGKILL)


def test_without_persistence_a_restart_forgets_every_record_so_work_runs_again(
    tmp_path: Path, use: Callable[[RedisServer], None]
) -> None:
    server = RedisServer(tmp_path, "none").start()
    use(server)
    try:
        sent = send_welcome_emails("welcome")
        check_lock("charge-running", lease=600)

        server.stop(signal.SIGTERM)  # even a clean shutdown keeps nothing
        server.start()

        survived = survivors(sent)
        print(
            f"\nno persistence, SIGTERM: {len(survived)} of {len(sent)} completed records survived"
        )
        assert survived == []
        # A claim still running before the restart is forgotten too: a retry runs it
        # again at the same time as the first attempt.
        assert check_lock("charge-running").locked
    finally:
        server.stop(signal.SIGKILL)


def test_rdb_snapshots_alone_lose_every_record_written_after_the_last_snapshot(
    tmp_path: Path, use: Callable[[RedisServer], None]
) -> None:
    server = RedisServer(tmp_path, "rdb-only").start()
    use(server)
    try:
        before = send_welcome_emails("before-snapshot", 10)
        server.client().save()  # what "save 3600 1" would do once an hour
        after = send_welcome_emails("after-snapshot", 10)

        server.stop(signal.SIGKILL)
        server.start()

        kept_before, kept_after = survivors(before), survivors(after)
        print(
            f"\nRDB only, SIGKILL: {len(kept_before)} of {len(before)} records from before the "
            f"snapshot survived, {len(kept_after)} of {len(after)} from after it"
        )
        assert len(kept_before) == len(before)
        assert kept_after == []
    finally:
        server.stop(signal.SIGKILL)
