"""The store contract: what every store must do for ``check_lock`` to keep its promises.

Every test takes the ``backend`` fixture, so the suite runs unchanged on each store
configuration of ``tests/conftest.py`` (SQLite, PostgreSQL, MariaDB, and Redis once it
exists). Expiry is shown with short leases and TTLs and ``time.sleep``; no test asserts
how long anything took.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.dispatch import Signal
from django.utils import timezone

from django_onceonly import (
    FingerprintMismatch,
    LockLost,
    check_lock,
    signals,
)
from django_onceonly.locks import Lock
from django_onceonly.stores import Record
from django_onceonly.stores.database import close_connections
from tests.conftest import Backend

SHORT = 0.3  # seconds: a lease or TTL that a test waits out
PAST_SHORT = 0.45  # seconds slept to be safely past SHORT


class SignalLog:
    """Every django-onceonly signal sent while the fixture is active, in order."""

    NAMES = (
        "lock_acquired",
        "duplicate_blocked",
        "lock_completed",
        "lock_released",
        "lock_failed",
        "lease_expired",
    )

    def __init__(self) -> None:
        self.events: list[tuple[str, Lock, dict[str, Any]]] = []
        self._receivers: list[tuple[Signal, Any]] = []
        for name in self.NAMES:
            signal: Signal = getattr(signals, name)

            def receiver(sender: Any, *, lock: Lock, _name: str = name, **kwargs: Any) -> None:
                kwargs.pop("signal", None)
                self.events.append((_name, lock, kwargs))

            signal.connect(receiver, weak=False)
            self._receivers.append((signal, receiver))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.events]

    def clear(self) -> None:
        self.events.clear()

    def disconnect(self) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)


@pytest.fixture
def sent() -> Iterator[SignalLog]:
    log = SignalLog()
    yield log
    log.disconnect()


# -- claiming ----------------------------------------------------------------------------


def test_claim_on_absent_key_is_locked(backend: Backend) -> None:
    lock = check_lock("welcome_email_1")

    assert lock.status == "locked"
    assert lock.locked
    assert not lock.duplicate
    assert lock.token
    assert (lock.key, lock.scope) == ("welcome_email_1", "")
    record = backend.record("welcome_email_1")
    assert record is not None
    assert record.status == "in_progress"
    assert record.owner_token == lock.token
    assert record.lease_expires_at is not None
    assert record.expires_at is None


def test_second_claim_is_a_duplicate_in_progress_with_retry_after(backend: Backend) -> None:
    first = check_lock("welcome_email_1", lease=60)

    second = check_lock("welcome_email_1", lease=60)

    assert second.status == "duplicate"
    assert second.duplicate
    assert not second.locked
    assert second.token is None
    assert second.record_status == "in_progress"
    assert second.retry_after is not None
    assert 1 <= second.retry_after <= 60
    record = backend.record("welcome_email_1")
    assert record is not None
    assert record.owner_token == first.token


def test_each_claim_gets_its_own_token(backend: Backend) -> None:
    tokens = {check_lock(f"intent-{n}").token for n in range(5)}

    assert len(tokens) == 5


def test_duplicate_lock_cannot_complete_release_fail_or_extend(backend: Backend) -> None:
    owner = check_lock("k")
    duplicate = check_lock("k")

    with pytest.raises(LockLost, match="this lock is a duplicate, not the owner"):
        duplicate.complete("x")
    with pytest.raises(LockLost, match="this lock is a duplicate"):
        duplicate.release()
    with pytest.raises(LockLost, match="this lock is a duplicate"):
        duplicate.fail("x")
    with pytest.raises(LockLost, match="this lock is a duplicate"):
        duplicate.extend(60)
    record = backend.record("k")
    assert record is not None
    assert record.status == "in_progress"
    assert record.owner_token == owner.token


# -- completing and replaying ------------------------------------------------------------


def test_complete_stores_result_and_later_claims_replay_it(backend: Backend) -> None:
    lock = check_lock("charge_order_7")
    lock.complete({"charge_id": "ch_1", "amount": 1250, "items": [1, 2]})

    record = backend.record("charge_order_7")
    assert record is not None
    assert record.status == "completed"
    assert record.result == {"charge_id": "ch_1", "amount": 1250, "items": [1, 2]}
    assert record.completed_at is not None
    assert record.lease_expires_at is None
    assert record.expires_at is not None
    for _ in range(2):
        again = check_lock("charge_order_7")
        assert again.duplicate
        assert again.record_status == "completed"
        assert again.result == {"charge_id": "ch_1", "amount": 1250, "items": [1, 2]}
        assert again.retry_after is None
        assert again.completed_at is not None


@pytest.mark.parametrize(
    "value",
    [None, 0, 0.0, False, {}, [], "", {"nested": None}, [None]],
    ids=repr,
)
def test_none_and_falsy_results_are_stored_and_replayed_exactly(
    backend: Backend, value: Any
) -> None:
    check_lock("falsy").complete(value)

    record = backend.record("falsy")
    assert record is not None
    assert record.status == "completed"
    replay = check_lock("falsy")
    assert replay.duplicate
    assert replay.record_status == "completed"
    # `0 == False` and `0 == 0.0` in Python: the type must survive too.
    assert replay.result == value
    assert type(replay.result) is type(value)
    assert record.result == value
    assert type(record.result) is type(value)


@pytest.mark.parametrize(
    "value",
    ["C:\\u0000dir", "\\\\u0000", {"pattern": "\\u0000"}, "\u2028 \u00e9 \U0001f642"],
    ids=["backslash-u0000", "two-backslashes-u0000", "in-dict", "unicode"],
)
def test_text_that_only_looks_like_an_escape_round_trips(backend: Backend, value: Any) -> None:
    check_lock("text").complete(value)

    assert check_lock("text").result == value


def test_completing_twice_is_refused(backend: Backend) -> None:
    lock = check_lock("k")
    lock.complete(1)

    with pytest.raises(LockLost, match="already finished"):
        lock.complete(2)
    record = backend.record("k")
    assert record is not None
    assert record.result == 1


# -- releasing, failing, extending -------------------------------------------------------


def test_release_lets_the_next_claim_run(backend: Backend) -> None:
    first = check_lock("k")
    first.release()

    assert backend.record("k") is None
    second = check_lock("k")
    assert second.locked
    assert second.token != first.token


def test_fail_blocks_until_released(backend: Backend) -> None:
    lock = check_lock("k")
    lock.fail(ValueError("card declined"))

    record = backend.record("k")
    assert record is not None
    assert record.status == "failed"
    assert record.error == "ValueError: card declined"
    blocked = check_lock("k")
    assert blocked.duplicate
    assert blocked.record_status == "failed"
    assert blocked.error == "ValueError: card declined"
    assert blocked.retry_after is None

    assert backend.store.force_release("", "k") is True
    assert check_lock("k").locked


def test_failed_record_blocks_until_it_expires(backend: Backend) -> None:
    check_lock("k", ttl=SHORT).fail("provider said no")
    assert check_lock("k").record_status == "failed"

    time.sleep(PAST_SHORT)

    retry = check_lock("k")
    assert retry.locked
    record = backend.record("k")
    assert record is not None
    assert record.status == "in_progress"
    assert record.error == ""


def test_fail_with_outcome_unknown_blocks_and_never_expires(backend: Backend) -> None:
    lock = check_lock("k", ttl=SHORT)
    lock.fail(TimeoutError("provider timed out"), outcome_unknown=True)

    record = backend.record("k")
    assert record is not None
    assert record.status == "unknown"
    assert record.expires_at is None
    time.sleep(PAST_SHORT)
    blocked = check_lock("k", ttl=SHORT)
    assert blocked.duplicate
    assert blocked.record_status == "unknown"
    assert blocked.error == "TimeoutError: provider timed out"


def test_extend_pushes_the_lease(backend: Backend) -> None:
    lock = check_lock("k", lease=SHORT)
    before = backend.record("k")
    assert before is not None
    assert before.lease_expires_at is not None

    lock.extend(60)

    after = backend.record("k")
    assert after is not None
    assert after.lease_expires_at is not None
    assert after.lease_expires_at > before.lease_expires_at
    assert after.owner_token == lock.token
    time.sleep(PAST_SHORT)
    other = check_lock("k", lease=SHORT)
    assert other.duplicate
    assert other.record_status == "in_progress"
    lock.complete("done")
    assert check_lock("k").result == "done"


def test_extend_refuses_a_non_positive_span(backend: Backend) -> None:
    lock = check_lock("k", lease=60)
    before = backend.record("k")

    with pytest.raises(ValueError, match="seconds must be a positive number"):
        lock.extend(0)
    assert backend.record("k") == before


# -- fencing -----------------------------------------------------------------------------


def _stale_owner_and_successor(key: str) -> tuple[Lock, Lock]:
    old = check_lock(key, lease=SHORT)
    time.sleep(PAST_SHORT)
    new = check_lock(key, lease=60)
    assert new.locked
    assert new.token != old.token
    return old, new


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("complete", lambda lock: lock.complete("stale result")),
        ("release", lambda lock: lock.release()),
        ("fail", lambda lock: lock.fail("stale failure")),
        ("extend", lambda lock: lock.extend(60)),
    ],
    ids=["complete", "release", "fail", "extend"],
)
def test_stale_owner_gets_lock_lost_and_cannot_touch_new_owners_record(
    backend: Backend, settings: Any, operation: str, call: Any
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    old, new = _stale_owner_and_successor("k")
    before = backend.record("k")

    with pytest.raises(LockLost, match="this owner no longer holds it"):
        call(old)

    after = backend.record("k")
    assert after == before
    assert after is not None
    assert after.owner_token == new.token
    assert after.status == "in_progress"
    assert after.result is None
    new.complete("new owner's result")
    assert check_lock("k").result == "new owner's result"


def test_stale_owner_cannot_overwrite_a_completed_record(backend: Backend) -> None:
    old, new = _stale_owner_and_successor("k")
    new.complete("first real result")

    for call in (lambda: old.complete("late"), old.release, lambda: old.fail("late")):
        with pytest.raises(LockLost):
            call()

    record = backend.record("k")
    assert record is not None
    assert record.status == "completed"
    assert record.result == "first real result"
    assert record.owner_token == new.token


def test_released_owner_cannot_act_after_someone_else_claims(backend: Backend) -> None:
    first = check_lock("k")
    assert backend.store.force_release("", "k")
    second = check_lock("k")

    with pytest.raises(LockLost):
        first.complete("late")
    record = backend.record("k")
    assert record is not None
    assert record.owner_token == second.token
    assert record.status == "in_progress"


# -- lease expiry ------------------------------------------------------------------------


def test_stale_lease_is_reclaimed_by_the_next_claim(
    backend: Backend, settings: Any, sent: SignalLog
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    check_lock("k", lease=SHORT)
    time.sleep(PAST_SHORT)
    sent.clear()

    lock = check_lock("k", lease=60)

    assert lock.locked
    assert sent.names() == ["lease_expired", "lock_acquired"]
    assert sent.events[0][2] == {"action": "reclaimed"}
    assert sent.events[0][1] is lock
    record = backend.record("k")
    assert record is not None
    assert record.status == "in_progress"
    assert record.owner_token == lock.token


def test_stale_lease_with_hold_turns_unknown_and_is_not_retried(
    backend: Backend, settings: Any, sent: SignalLog
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "hold"
    check_lock("k", lease=SHORT, ttl=SHORT)
    time.sleep(PAST_SHORT)
    sent.clear()

    held = check_lock("k")

    assert held.duplicate
    assert held.record_status == "unknown"
    assert "without an outcome" in held.error
    assert sent.names() == ["lease_expired", "duplicate_blocked"]
    assert sent.events[0][2] == {"action": "held"}
    record = backend.record("k")
    assert record is not None
    assert record.status == "unknown"
    assert record.expires_at is None
    time.sleep(PAST_SHORT)
    sent.clear()
    again = check_lock("k")
    assert again.duplicate
    assert again.record_status == "unknown"
    # The lease ended once; only the first claim that found it acted on it.
    assert sent.names() == ["duplicate_blocked"]


def test_slow_owner_may_still_record_its_outcome_after_a_hold(
    backend: Backend, settings: Any
) -> None:
    # With "hold" nobody took the key over: the owner was slow, not replaced, so its
    # real outcome is better than "unknown" (stores/base.py, Fencing).
    settings.ONCEONLY_AFTER_LEASE = "hold"
    slow = check_lock("k", lease=SHORT)
    time.sleep(PAST_SHORT)
    assert check_lock("k").record_status == "unknown"

    slow.complete("sent after all")

    assert check_lock("k").result == "sent after all"


# -- fingerprints ------------------------------------------------------------------------


def test_fingerprint_mismatch_raises_and_never_runs_again(backend: Backend) -> None:
    ran: list[str] = []
    lock = check_lock("order-9", fingerprint="sha256:aaa")
    ran.append("first")
    lock.complete({"ok": True})

    with pytest.raises(
        FingerprintMismatch, match="'order-9' was first used with a different fingerprint"
    ) as caught:
        check_lock("order-9", fingerprint="sha256:bbb")

    assert caught.value.key == "order-9"
    same = check_lock("order-9", fingerprint="sha256:aaa")
    assert same.duplicate
    assert same.result == {"ok": True}
    assert ran == ["first"]
    record = backend.record("order-9")
    assert record is not None
    assert record.fingerprint == "sha256:aaa"
    assert record.result == {"ok": True}


def test_fingerprint_mismatch_while_in_progress(backend: Backend) -> None:
    owner = check_lock("order-9", fingerprint="a", lease=60)

    with pytest.raises(FingerprintMismatch):
        check_lock("order-9", fingerprint="b")

    same = check_lock("order-9", fingerprint="a")
    assert same.duplicate
    assert same.record_status == "in_progress"
    record = backend.record("order-9")
    assert record is not None
    assert record.owner_token == owner.token


def test_stale_lease_is_not_reclaimed_by_a_different_fingerprint(
    backend: Backend, settings: Any
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    old = check_lock("order-9", fingerprint="a", lease=SHORT)
    time.sleep(PAST_SHORT)

    with pytest.raises(FingerprintMismatch):
        check_lock("order-9", fingerprint="b")

    record = backend.record("order-9")
    assert record is not None
    assert record.owner_token == old.token
    assert record.fingerprint == "a"


def test_claim_without_fingerprint_is_a_plain_duplicate(backend: Backend) -> None:
    check_lock("order-9", fingerprint="a").complete(5)

    assert check_lock("order-9").result == 5


# -- TTL ---------------------------------------------------------------------------------


def test_finished_record_past_its_ttl_counts_as_absent(backend: Backend) -> None:
    first = check_lock("k", ttl=SHORT, fingerprint="a")
    first.complete("old result")
    check_lock("k")  # one duplicate blocked while it was alive
    time.sleep(PAST_SHORT)

    fresh = check_lock("k", fingerprint="b")

    assert fresh.locked
    assert fresh.result is None
    record = backend.record("k")
    assert record is not None
    assert record.status == "in_progress"
    assert record.owner_token == fresh.token
    assert record.result is None
    assert record.fingerprint == "b"
    assert record.completed_at is None
    assert record.expires_at is None
    assert record.duplicates_blocked == 0
    assert record.last_duplicate_at is None
    assert record.created_at is not None
    assert first.created_at is not None
    assert record.created_at > first.created_at


def test_ttl_none_keeps_the_record_forever(backend: Backend, settings: Any) -> None:
    settings.ONCEONLY_TTL = None
    check_lock("k").complete(1)

    record = backend.record("k")
    assert record is not None
    assert record.expires_at is None
    assert check_lock("k").result == 1


def test_ttl_defaults_to_the_setting(backend: Backend, settings: Any) -> None:
    settings.ONCEONLY_TTL = SHORT
    check_lock("k").complete(1)
    assert check_lock("k").duplicate

    time.sleep(PAST_SHORT)

    assert check_lock("k").locked


# -- duplicates --------------------------------------------------------------------------


def test_duplicates_are_counted_and_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    check_lock("k").complete("r")
    record = backend.record("k")
    assert record is not None
    assert record.duplicates_blocked == 0
    assert record.last_duplicate_at is None

    with caplog.at_level(logging.INFO, logger="django_onceonly"):
        for _ in range(3):
            check_lock("k")

    record = backend.record("k")
    assert record is not None
    assert record.duplicates_blocked == 3
    assert record.last_duplicate_at is not None
    assert record.completed_at is not None
    assert record.last_duplicate_at >= record.completed_at
    blocked = [r for r in caplog.records if "duplicate blocked" in r.getMessage()]
    assert len(blocked) == 3
    assert all("'k'" in r.getMessage() for r in blocked)


def test_reading_a_record_counts_no_duplicate(backend: Backend) -> None:
    check_lock("k")
    for _ in range(3):
        backend.record("k")

    record = backend.record("k")
    assert record is not None
    assert record.duplicates_blocked == 0


# -- keys and scopes ---------------------------------------------------------------------


def test_same_key_in_two_scopes_is_two_intents(backend: Backend) -> None:
    tenant_a = check_lock("invoice-1", scope="tenant-a")
    tenant_b = check_lock("invoice-1", scope="tenant-b")
    unscoped = check_lock("invoice-1")

    assert tenant_a.locked
    assert tenant_b.locked
    assert unscoped.locked
    tenant_a.complete("a")
    tenant_b.complete("b")
    assert check_lock("invoice-1", scope="tenant-a").result == "a"
    assert check_lock("invoice-1", scope="tenant-b").result == "b"
    assert check_lock("invoice-1").record_status == "in_progress"
    record_a = backend.record("invoice-1", scope="tenant-a")
    assert record_a is not None
    assert record_a.result == "a"
    assert record_a.scope == "tenant-a"


def test_keys_differing_only_by_case_or_trailing_space_are_distinct(backend: Backend) -> None:
    variants = ["Order-1", "order-1", "ORDER-1", "Order-1 ", "Order-1  ", " Order-1", "Ordér-1"]

    locks = [check_lock(key) for key in variants]

    assert all(lock.locked for lock in locks)
    for key, lock in zip(variants, locks, strict=True):
        lock.complete(key)
    for key in variants:
        record = backend.record(key)
        assert record is not None
        assert record.key == key
        assert record.result == key
        assert check_lock(key).result == key


def test_scopes_differing_only_by_case_are_distinct(backend: Backend) -> None:
    assert check_lock("k", scope="Tenant").locked
    assert check_lock("k", scope="tenant").locked
    assert check_lock("k", scope="tenant ").locked


def test_longest_key_and_unicode_round_trip(backend: Backend) -> None:
    key = "é" * 200 + "🙂" * 55
    assert len(key) == 255

    check_lock(key, scope="ü" * 255).complete("ok")

    record = backend.record(key, scope="ü" * 255)
    assert record is not None
    assert record.key == key
    assert check_lock(key, scope="ü" * 255).result == "ok"


def test_metadata_is_kept_with_the_record(backend: Backend) -> None:
    check_lock("k", metadata={"user_id": 7, "source": "signup"})

    record = backend.record("k")
    assert record is not None
    assert record.metadata == {"user_id": 7, "source": "signup"}


# -- context manager ---------------------------------------------------------------------


def test_context_manager_completes_with_none_on_normal_exit(backend: Backend) -> None:
    with check_lock("k") as lock:
        assert lock.locked

    record = backend.record("k")
    assert record is not None
    assert record.status == "completed"
    assert record.result is None
    replay = check_lock("k")
    assert replay.record_status == "completed"
    assert replay.result is None


def test_context_manager_keeps_an_explicit_result(backend: Backend) -> None:
    with check_lock("k") as lock:
        lock.complete({"id": 3})

    record = backend.record("k")
    assert record is not None
    assert record.result == {"id": 3}


def test_context_manager_releases_on_exception_and_reraises(backend: Backend) -> None:
    with pytest.raises(ConnectionError, match="provider down"), check_lock("k"):
        raise ConnectionError("provider down")

    assert backend.record("k") is None
    assert check_lock("k").locked


def test_context_manager_fails_on_exception_with_on_error_fail(backend: Backend) -> None:
    with pytest.raises(ValueError, match="bad address"), check_lock("k", on_error="fail"):
        raise ValueError("bad address")

    record = backend.record("k")
    assert record is not None
    assert record.status == "failed"
    assert record.error == "ValueError: bad address"
    assert check_lock("k").record_status == "failed"


def test_context_manager_does_nothing_for_a_duplicate(backend: Backend) -> None:
    owner = check_lock("k", lease=60)
    before = backend.record("k")

    with check_lock("k") as duplicate:
        assert duplicate.duplicate
    with pytest.raises(RuntimeError), check_lock("k", on_error="fail"):
        raise RuntimeError("boom")

    after = backend.record("k")
    assert after is not None
    assert before is not None
    assert after.status == "in_progress"
    assert after.owner_token == owner.token
    assert after.result is None
    assert after.duplicates_blocked == before.duplicates_blocked + 2


def test_context_manager_after_explicit_release_does_nothing(backend: Backend) -> None:
    with check_lock("k") as lock:
        lock.release()

    assert backend.record("k") is None


# -- signals -----------------------------------------------------------------------------


def test_each_signal_fires_exactly_once_per_event(backend: Backend, sent: SignalLog) -> None:
    lock = check_lock("a")
    assert sent.names() == ["lock_acquired"]
    assert sent.events[0][1] is lock

    sent.clear()
    duplicate = check_lock("a")
    assert sent.names() == ["duplicate_blocked"]
    assert sent.events[0][1] is duplicate

    sent.clear()
    lock.complete({"n": 1})
    assert sent.names() == ["lock_completed"]
    assert sent.events[0][2] == {"result": {"n": 1}}

    sent.clear()
    released = check_lock("b")
    released.release()
    assert sent.names() == ["lock_acquired", "lock_released"]
    assert sent.events[1][1] is released

    sent.clear()
    failed = check_lock("c")
    failed.fail("no")
    assert sent.names() == ["lock_acquired", "lock_failed"]
    assert sent.events[1][2] == {"error": "no", "status": "failed"}

    sent.clear()
    check_lock("d").fail("maybe", outcome_unknown=True)
    assert sent.names() == ["lock_acquired", "lock_failed"]
    assert sent.events[1][2] == {"error": "maybe", "status": "unknown"}


def test_context_manager_sends_one_signal_per_outcome(backend: Backend, sent: SignalLog) -> None:
    with check_lock("a"):
        pass
    with pytest.raises(KeyError), check_lock("b"):
        raise KeyError("x")
    with pytest.raises(KeyError), check_lock("c", on_error="fail"):
        raise KeyError("x")

    assert sent.names() == [
        "lock_acquired",
        "lock_completed",
        "lock_acquired",
        "lock_released",
        "lock_acquired",
        "lock_failed",
    ]


def test_refused_operations_send_no_signal(backend: Backend, sent: SignalLog) -> None:
    old, _new = _stale_owner_and_successor("k")
    sent.clear()

    for call in (lambda: old.complete(1), old.release, lambda: old.fail("x")):
        with pytest.raises(LockLost):
            call()

    assert sent.names() == []


# -- release of the version an operator saw ----------------------------------------------


def _seen(backend: Backend, key: str) -> Record:
    record = backend.record(key)
    assert record is not None
    return record


@pytest.mark.parametrize("outcome", ["completed", "failed", "unknown"])
def test_release_if_unchanged_deletes_the_finished_record_seen(
    backend: Backend, outcome: str
) -> None:
    lock = check_lock("k")
    if outcome == "completed":
        lock.complete("sent")
    else:
        lock.fail("no", outcome_unknown=outcome == "unknown")
    seen = _seen(backend, "k")

    released = backend.store.release_if_unchanged(
        "", "k", owner_token=seen.owner_token, status=outcome, allow_live=False, now=timezone.now()
    )

    assert released is True
    assert backend.record("k") is None
    assert check_lock("k").locked


def test_release_if_unchanged_leaves_another_owner_or_status_alone(backend: Backend) -> None:
    lock = check_lock("k", lease=60)
    seen = _seen(backend, "k")
    now = timezone.now()

    assert not backend.store.release_if_unchanged(
        "", "k", owner_token="0" * 32, status="in_progress", allow_live=True, now=now
    )
    assert not backend.store.release_if_unchanged(
        "", "k", owner_token=seen.owner_token, status="completed", allow_live=True, now=now
    )
    assert not backend.store.release_if_unchanged(
        "", "other", owner_token=seen.owner_token, status="in_progress", allow_live=True, now=now
    )
    assert backend.record("k") == seen
    lock.complete("the owner finished")
    assert check_lock("k").result == "the owner finished"


def test_release_if_unchanged_leaves_a_live_lease_alone_unless_allowed(backend: Backend) -> None:
    check_lock("k", lease=60)
    seen = _seen(backend, "k")
    assert seen.lease_expires_at is not None

    def release(*, allow_live: bool, now: dt.datetime) -> bool:
        return backend.store.release_if_unchanged(
            "",
            "k",
            owner_token=seen.owner_token,
            status="in_progress",
            allow_live=allow_live,
            now=now,
        )

    assert release(allow_live=False, now=timezone.now()) is False
    assert backend.record("k") == seen
    # At a `now` past the lease end the same claim is stale: released.
    assert release(allow_live=False, now=seen.lease_expires_at) is True
    assert backend.record("k") is None
    check_lock("k", lease=60)
    seen = _seen(backend, "k")
    assert release(allow_live=True, now=timezone.now()) is True
    assert backend.record("k") is None


def test_release_if_unchanged_refuses_a_status_no_record_has(backend: Backend) -> None:
    check_lock("k")
    seen = _seen(backend, "k")

    with pytest.raises(ValueError, match="no record has the status 'done'"):
        backend.store.release_if_unchanged(
            "",
            "k",
            owner_token=seen.owner_token,
            status="done",
            allow_live=True,
            now=timezone.now(),
        )
    assert backend.record("k") == seen


def test_release_if_unchanged_never_releases_a_claim_that_took_the_key_over(
    backend: Backend, settings: Any
) -> None:
    # The window of a check-then-delete: the operator is shown a stale claim, a new claim
    # takes the key over, then the release arrives. It must find the record changed.
    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    check_lock("k", lease=SHORT)
    time.sleep(PAST_SHORT)
    seen = _seen(backend, "k")
    successor = check_lock("k", lease=60)
    assert successor.locked

    released = backend.store.release_if_unchanged(
        "",
        "k",
        owner_token=seen.owner_token,
        status=seen.status,
        allow_live=False,
        now=timezone.now(),
    )

    assert released is False
    record = _seen(backend, "k")
    assert record.owner_token == successor.token
    successor.complete("the successor's result")
    assert check_lock("k").result == "the successor's result"


RELEASE_RACE_TRIALS = {"sqlite": 30, "postgres": 200, "mariadb": 200, "redis": 200}


def test_release_racing_a_takeover_never_loses_the_new_claim(
    backend: Backend, settings: Any
) -> None:
    # Each trial races an operator's release of a stale claim against a claim taking it
    # over. Whichever lands first, the claim is acquired and its record must survive.
    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    trials = RELEASE_RACE_TRIALS[backend.name]
    run = uuid.uuid4().hex[:8]
    keys = [f"release-race-{run}-{n}" for n in range(trials)]
    for key in keys:
        assert check_lock(key, lease=0.001).locked
    time.sleep(0.05)
    seen = [_seen(backend, key) for key in keys]
    store = backend.store
    barrier = threading.Barrier(2)
    released: list[bool] = []
    claims: list[Lock] = []
    crashes: list[BaseException] = []

    def operator() -> None:
        try:
            for key, record in zip(keys, seen, strict=True):
                barrier.wait(60)
                released.append(
                    store.release_if_unchanged(
                        "",
                        key,
                        owner_token=record.owner_token,
                        status=record.status,
                        allow_live=False,
                        now=timezone.now(),
                    )
                )
        except BaseException as exc:
            barrier.abort()
            crashes.append(exc)
        finally:
            connections.close_all()
            close_connections()

    def claimer() -> None:
        try:
            for key in keys:
                barrier.wait(60)
                claims.append(check_lock(key, lease=60))
        except BaseException as exc:
            barrier.abort()
            crashes.append(exc)
        finally:
            connections.close_all()
            close_connections()

    threads = [threading.Thread(target=operator), threading.Thread(target=claimer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not crashes, crashes
    print(
        f"\n{backend.name}: {trials} trials of a release racing a takeover, "
        f"{sum(released)} released before the claim, {trials - sum(released)} found it taken"
    )
    for key, claim in zip(keys, claims, strict=True):
        assert claim.locked, key
        record = backend.record(key)
        assert record is not None, f"{key}: the new claim's record was released"
        assert record.owner_token == claim.token
