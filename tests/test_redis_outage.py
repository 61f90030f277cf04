"""Redis stopped mid-run: fail closed with ``"raise"``, run and warn with ``"run"``, resume after.

Each test starts its own redis-server (tests/redis_server.py) with AOF ``always`` and
stops it between calls, as an outage would.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from django_onceonly import StoreUnavailable, check_lock, once
from tests.redis_server import RedisServer, needs_redis_server, use_as_store

pytestmark = needs_redis_server


@pytest.fixture
def server(tmp_path: Path, settings: Any) -> Iterator[RedisServer]:
    own = RedisServer(tmp_path, "aof-always").start()
    use_as_store(own, settings)
    yield own
    own.stop(signal.SIGKILL)


def counting_sender() -> tuple[Callable[[int], str], list[int]]:
    sent: list[int] = []

    @once(key="welcome_email_{user_id}")
    def send_welcome_email(user_id: int) -> str:
        sent.append(user_id)
        return f"message-{user_id}"

    return send_welcome_email, sent


def test_with_raise_an_outage_gives_store_unavailable_and_runs_nothing(
    server: RedisServer, settings: Any
) -> None:
    settings.ONCEONLY_ON_STORE_ERROR = "raise"
    send, sent = counting_sender()
    assert send(1) == "message-1"
    in_flight = check_lock("charge-7", lease=600)

    server.stop(signal.SIGKILL)

    for user_id in (1, 2, 3):
        with pytest.raises(StoreUnavailable, match=r"Redis .* is unavailable"):
            send(user_id)
    with pytest.raises(StoreUnavailable):
        check_lock("charge-7")
    # The owner cannot record its outcome either; it keeps its claim for later.
    with pytest.raises(StoreUnavailable):
        in_flight.complete("charged")
    assert sent == [1]  # nothing ran unprotected

    server.start()

    assert send(1) == "message-1"  # the record from before the outage still answers
    assert send(2) == "message-2"
    assert sent == [1, 2]
    assert check_lock("charge-7").record_status == "in_progress"


def test_an_owner_can_finish_after_redis_comes_back(server: RedisServer) -> None:
    lock = check_lock("charge-7", lease=600)
    server.stop(signal.SIGTERM)
    with pytest.raises(StoreUnavailable):
        lock.complete("charged")

    server.start()
    lock.complete("charged")

    assert check_lock("charge-7").result == "charged"


def test_with_run_an_outage_runs_unprotected_with_a_warning_each_time(
    server: RedisServer, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.ONCEONLY_ON_STORE_ERROR = "run"
    send, sent = counting_sender()
    assert send(1) == "message-1"
    server.stop(signal.SIGKILL)

    with caplog.at_level(logging.WARNING, logger="django_onceonly"):
        assert send(1) == "message-1"
        assert send(1) == "message-1"
        lock = check_lock("charge-7")
        assert lock.locked
        assert lock.unprotected
        lock.complete("charged")  # nothing to write: the run was unprotected

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("UNPROTECTED" in r.getMessage() for r in warnings)
    assert "'welcome_email_1'" in warnings[0].getMessage()
    assert sent == [1, 1, 1]  # the price of "run": duplicates during the outage

    server.start()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="django_onceonly"):
        assert send(1) == "message-1"
    assert sent == [1, 1, 1]  # protected again: the stored result answers
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
