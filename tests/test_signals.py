"""Each signal of the SPEC fires exactly once per event, on every store, and each blocked
duplicate is logged at INFO with its key."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from django.dispatch import Signal

from django_onceonly import InProgress, LockLost, check_lock, once, signals
from django_onceonly.locks import Lock
from tests.conftest import Backend

SIGNALS: dict[str, Signal] = {
    "lock_acquired": signals.lock_acquired,
    "duplicate_blocked": signals.duplicate_blocked,
    "lock_completed": signals.lock_completed,
    "lock_released": signals.lock_released,
    "lock_failed": signals.lock_failed,
    "lease_expired": signals.lease_expired,
}


class Received:
    """Every signal sent during a test, in order, with its arguments."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def count(self) -> Counter[str]:
        return Counter(self.names())

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
def received() -> Iterator[Received]:
    log = Received()
    receivers = []
    for name, signal in SIGNALS.items():

        def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
            assert sender is Lock
            kwargs.pop("signal")
            log.events.append((_name, kwargs))

        signal.connect(receiver, weak=False)
        receivers.append((signal, receiver))
    yield log
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def test_claim_then_complete_sends_acquired_then_completed_once_each(
    backend: Backend, received: Received
) -> None:
    lock = check_lock("welcome_email_1")
    lock.complete({"id": "m1"})

    assert received.names() == ["lock_acquired", "lock_completed"]
    assert received.events[0][1]["lock"] is lock
    assert received.events[1][1] == {"lock": lock, "result": {"id": "m1"}}


def test_each_duplicate_sends_one_signal_and_one_info_log_with_its_key(
    backend: Backend, received: Received, caplog: pytest.LogCaptureFixture
) -> None:
    check_lock("welcome_email_1").complete("sent")
    received.clear()

    with caplog.at_level(logging.INFO, logger="django_onceonly"):
        duplicates = [check_lock("welcome_email_1") for _ in range(3)]

    assert received.names() == ["duplicate_blocked"] * 3
    assert [kwargs["lock"] for _, kwargs in received.events] == duplicates
    logged = [r for r in caplog.records if "duplicate blocked" in r.getMessage()]
    assert len(logged) == 3
    for record in logged:
        assert record.levelno == logging.INFO
        assert record.name == "django_onceonly"
        assert "'welcome_email_1'" in record.getMessage()
        assert "record is completed" in record.getMessage()


def test_a_duplicate_of_a_running_claim_is_signalled_and_logged_too(
    backend: Backend, received: Received, caplog: pytest.LogCaptureFixture
) -> None:
    owner = check_lock("charge_1", scope="shop-7", lease=600)

    with caplog.at_level(logging.INFO, logger="django_onceonly"):
        duplicate = check_lock("charge_1", scope="shop-7")

    assert received.count() == Counter({"lock_acquired": 1, "duplicate_blocked": 1})
    assert duplicate.record_status == "in_progress"
    assert [r.getMessage() for r in caplog.records] == [
        "django-onceonly: duplicate blocked for key 'charge_1' (scope 'shop-7'): record is in_progress"
    ]
    owner.release()


def test_release_sends_lock_released_once(backend: Backend, received: Received) -> None:
    lock = check_lock("k")
    lock.release()
    with pytest.raises(LockLost):
        lock.release()

    assert received.names() == ["lock_acquired", "lock_released"]


def test_fail_sends_lock_failed_once_with_error_and_status(
    backend: Backend, received: Received
) -> None:
    check_lock("declined").fail("card declined")
    check_lock("timed_out").fail(TimeoutError("provider"), outcome_unknown=True)

    failed = [kwargs for name, kwargs in received.events if name == "lock_failed"]
    assert [(f["lock"].key, f["status"], f["error"]) for f in failed] == [
        ("declined", "failed", "card declined"),
        ("timed_out", "unknown", "TimeoutError: provider"),
    ]
    assert received.count()["lock_failed"] == 2


def test_context_manager_sends_one_completion_or_one_release(
    backend: Backend, received: Received
) -> None:
    with check_lock("ok"):
        pass
    with pytest.raises(ValueError, match="boom"), check_lock("boom"):
        raise ValueError("boom")
    with pytest.raises(ValueError, match="bad"), check_lock("bad", on_error="fail"):
        raise ValueError("bad")

    assert received.names() == [
        "lock_acquired",
        "lock_completed",
        "lock_acquired",
        "lock_released",
        "lock_acquired",
        "lock_failed",
    ]


def test_a_lost_owner_sends_nothing(backend: Backend, received: Received) -> None:
    owner = check_lock("k", lease=600)
    backend.store.force_release("", "k")
    received.clear()

    with pytest.raises(LockLost):
        owner.complete("late")
    with pytest.raises(LockLost):
        owner.fail("late")

    assert received.events == []


def test_once_sends_acquired_completed_then_one_duplicate_per_call(
    backend: Backend, received: Received
) -> None:
    @once(key="welcome_{user_id}")
    def send_welcome(user_id: int) -> str:
        return f"sent to {user_id}"

    assert send_welcome(1) == "sent to 1"
    assert send_welcome(1) == "sent to 1"
    assert send_welcome(1) == "sent to 1"

    assert received.names() == [
        "lock_acquired",
        "lock_completed",
        "duplicate_blocked",
        "duplicate_blocked",
    ]


def test_once_on_a_running_intent_sends_one_duplicate(backend: Backend, received: Received) -> None:
    @once(key="report_{n}")
    def report(n: int) -> int:
        return n

    owner = check_lock("report_1", lease=600)
    with pytest.raises(InProgress):
        report(1)

    assert received.names() == ["lock_acquired", "duplicate_blocked"]
    owner.release()


def test_a_reclaimed_lease_sends_lease_expired_then_acquired(
    backend: Backend, received: Received, settings: Any
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    crashed = check_lock("k", lease=0.05)
    time.sleep(0.2)  # let the lease end; nothing here measures time
    received.clear()

    retry = check_lock("k")

    assert retry.locked
    assert [(name, kwargs.get("action")) for name, kwargs in received.events] == [
        ("lease_expired", "reclaimed"),
        ("lock_acquired", None),
    ]
    assert received.events[0][1]["lock"] is retry
    with pytest.raises(LockLost):
        crashed.complete("late")


def test_a_held_lease_sends_lease_expired_once_then_duplicates(
    backend: Backend, received: Received, settings: Any
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "hold"
    check_lock("k", lease=0.05)
    time.sleep(0.2)
    received.clear()

    first = check_lock("k")
    second = check_lock("k")

    assert first.duplicate
    assert first.record_status == second.record_status == "unknown"
    assert [(name, kwargs.get("action")) for name, kwargs in received.events] == [
        ("lease_expired", "held"),
        ("duplicate_blocked", None),
        ("duplicate_blocked", None),
    ]
