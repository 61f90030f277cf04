"""The store contract suite: what every store must do for ``check_lock`` to keep its promises.

Run it against your own store (needs pytest and pytest-django)::

    # tests/test_my_store.py
    import pytest
    from django_onceonly.testing.contract import StoreContract
    from django_onceonly.testing.races import RaceContract


    class TestMyStore(StoreContract, RaceContract):
        store_class = "myproject.stores.MemcachedStore"

        def reset_store(self, store):
            store.client.flush_all()  # every test starts with no records

Every test goes through the public API (``check_lock`` and the ``Lock``) or the store's
public methods, with ``ONCEONLY_STORE`` pointing at the store under test. Expiry is
shown with short leases and TTLs and ``time.sleep``; no test asserts how long anything
took. See ``docs/stores.md``.

This module is one class and stays one file (longer than the house's 400 lines) so that
the contract reads from top to bottom in the order ``stores/base.py`` states it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from django.dispatch import Signal
from django.utils import timezone

from django_onceonly import FingerprintMismatch, LockLost, check_lock, signals
from django_onceonly.locks import Lock
from django_onceonly.stores import BaseStore, ClaimRequest, Record, duplicates, get_store
from django_onceonly.stores.base import RECORD_FIELDS

__all__ = ["PAST_SHORT", "SHORT", "SignalLog", "StoreContract", "StoreTestCase", "StoreUnderTest"]

SHORT = 0.3  # seconds: a lease or TTL that a test waits out
PAST_SHORT = 0.45  # seconds slept to be safely past SHORT


@dataclass
class StoreUnderTest:
    """The store a test runs against: ``ONCEONLY_STORE`` names it for the test's duration."""

    name: str
    #: How many rounds each race of :mod:`django_onceonly.testing.races` runs.
    race_trials: int = 100

    @property
    def store(self) -> BaseStore:
        return get_store()

    def record(self, key: str, scope: str = "") -> Record | None:
        """The record as the store keeps it (expired or not), or None, once this process's
        buffered duplicate counts are written (:func:`~django_onceonly.stores.duplicates.flush`)."""
        duplicates.flush()
        return self.store.get(scope, key)


class StoreTestCase:
    """What the contract and race suites share: the ``onceonly_store`` fixture.

    Set :attr:`store_class` (the class or its dotted path), or override the
    ``onceonly_store`` fixture to configure the store yourself and yield a
    :class:`StoreUnderTest`. Records must not leak from one test into the next: a store
    on the Django database gets that from ``django_db(transaction=True)``, the default
    mark here; any other store implements :meth:`reset_store`.
    """

    pytestmark = [pytest.mark.django_db(transaction=True)]

    #: The store under test: a :class:`~django_onceonly.stores.BaseStore` subclass or
    #: its dotted path.
    store_class: ClassVar[type[BaseStore] | str | None] = None
    #: How many rounds each race runs (more on a fast store, fewer on a slow one).
    race_trials: ClassVar[int] = 100

    def reset_store(self, store: BaseStore) -> None:
        """Delete every record, before and after each test. Default: nothing to do."""

    @pytest.fixture
    def onceonly_store(self, settings: Any) -> Iterator[StoreUnderTest]:
        if self.store_class is None:
            pytest.fail(
                f"{type(self).__name__} must set store_class, or override the "
                "onceonly_store fixture"
            )
        path = self.store_class
        if not isinstance(path, str):
            path = f"{path.__module__}.{path.__qualname__}"
        settings.ONCEONLY_STORE = path
        self.reset_store(get_store())
        yield StoreUnderTest(name=type(self).__name__, race_trials=self.race_trials)
        duplicates.flush()  # while the test's store and records are still there
        self.reset_store(get_store())


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


def _stale_owner_and_successor(key: str) -> tuple[Lock, Lock]:
    old = check_lock(key, lease=SHORT)
    time.sleep(PAST_SHORT)
    new = check_lock(key, lease=60)
    assert new.locked
    assert new.token != old.token
    return old, new


def _seen(onceonly_store: StoreUnderTest, key: str) -> Record:
    record = onceonly_store.record(key)
    assert record is not None
    return record


def _same(replayed: Any, stored: Any) -> bool:
    """Equal, and of the same type all the way down (``1 == 1.0 == True`` in Python)."""
    if type(replayed) is not type(stored):
        return False
    if isinstance(stored, dict):
        return replayed.keys() == stored.keys() and all(
            _same(replayed[k], stored[k]) for k in stored
        )
    if isinstance(stored, list):
        return len(replayed) == len(stored) and all(
            _same(a, b) for a, b in zip(replayed, stored, strict=True)
        )
    return bool(replayed == stored)


def _fields(record: Record | None) -> dict[str, Any]:
    assert record is not None
    return {name: getattr(record, name) for name in RECORD_FIELDS}


class StoreContract(StoreTestCase):
    """The store contract of ``stores/base.py``, one test per rule. Subclass it (see above)."""

    @pytest.fixture
    def sent(self) -> Iterator[SignalLog]:
        log = SignalLog()
        yield log
        log.disconnect()

    # -- every field under its own name ---------------------------------------------------

    def test_every_field_is_stored_and_read_back_under_its_own_name(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        # A distinct value in every field (task_name is not task_id, no two times are
        # equal): a store that wrote or read a field by position would swap two of them.
        store = onceonly_store.store
        t0 = timezone.now().replace(microsecond=123456)
        at = {n: t0 + dt.timedelta(seconds=n, microseconds=n) for n in range(1, 8)}
        claim = ClaimRequest(
            scope="scope-a",
            key="key-b",
            token="token-c",
            now=t0,
            lease_expires_at=at[7],
            after_lease="reclaim",
            fingerprint="fingerprint-d",
            metadata={"metadata": "e"},
            metadata_json='{"metadata":"e"}',
            task_name="task-name-f",
            task_id="task-id-g",
        )
        assert store.claim(claim).acquired
        duplicate = ClaimRequest(
            scope="scope-a",
            key="key-b",
            token="token-other",
            now=at[1],
            lease_expires_at=at[6],
            after_lease="reclaim",
        )
        assert not store.claim(duplicate).acquired
        store.extend("scope-a", "key-b", "token-c", lease_expires_at=at[5], now=at[2])

        expected = {
            "scope": "scope-a",
            "key": "key-b",
            "status": "in_progress",
            "owner_token": "token-c",
            "fingerprint": "fingerprint-d",
            "result": None,
            "error": "",
            "task_name": "task-name-f",
            "task_id": "task-id-g",
            "metadata": {"metadata": "e"},
            "created_at": t0,
            "updated_at": at[2],
            "completed_at": None,
            "lease_expires_at": at[5],
            "expires_at": None,
            "duplicates_blocked": 1,
            "last_duplicate_at": at[1],
        }
        duplicates.flush()
        assert _fields(store.get("scope-a", "key-b")) == expected

        store.finish(
            "scope-a",
            "key-b",
            "token-c",
            status="failed",
            result_json='{"result":"h"}',
            error="error-i",
            now=at[3],
            expires_at=t0 + dt.timedelta(hours=1),
        )

        expected |= {
            "status": "failed",
            "result": {"result": "h"},
            "error": "error-i",
            "updated_at": at[3],
            "completed_at": at[3],
            "lease_expires_at": None,
            "expires_at": t0 + dt.timedelta(hours=1),
        }
        assert _fields(store.get("scope-a", "key-b")) == expected
        assert store.get("scope-a", "key-a") is None
        assert store.get("scope-b", "key-b") is None

    # -- results replay as they were stored -------------------------------------------

    @pytest.mark.parametrize(
        "value",
        [
            1.0,
            0.1,
            -0.0,
            1e308,
            -1e308,
            1.7976931348623157e308,
            5e-324,
            1e16,
            1e-7,
            2**53 + 1,
            2**64,
            10**30,
            -(10**20),
            [1.0, 1e308, 2.5e-300, 10**25, {"price": 0.1, "big": 1e300, "n": 7}],
        ],
        ids=repr,
    )
    def test_numbers_replay_with_their_value_and_type(
        self, onceonly_store: StoreUnderTest, value: Any
    ) -> None:
        check_lock("number").complete(value)

        replay = check_lock("number")
        record = onceonly_store.record("number")

        assert replay.duplicate
        assert _same(replay.result, value), replay.result
        assert record is not None
        assert _same(record.result, value), record.result

    # -- the public API on this store -------------------------------------------------------

    def test_claim_on_absent_key_is_locked(self, onceonly_store: StoreUnderTest) -> None:
        lock = check_lock("welcome_email_1")

        assert lock.status == "locked"
        assert lock.locked
        assert not lock.duplicate
        assert lock.token
        assert (lock.key, lock.scope) == ("welcome_email_1", "")
        record = onceonly_store.record("welcome_email_1")
        assert record is not None
        assert record.status == "in_progress"
        assert record.owner_token == lock.token
        assert record.lease_expires_at is not None
        assert record.expires_at is None

    def test_second_claim_is_a_duplicate_in_progress_with_retry_after(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        first = check_lock("welcome_email_1", lease=60)

        second = check_lock("welcome_email_1", lease=60)

        assert second.status == "duplicate"
        assert second.duplicate
        assert not second.locked
        assert second.token is None
        assert second.record_status == "in_progress"
        assert second.retry_after is not None
        assert 1 <= second.retry_after <= 60
        record = onceonly_store.record("welcome_email_1")
        assert record is not None
        assert record.owner_token == first.token

    def test_each_claim_gets_its_own_token(self, onceonly_store: StoreUnderTest) -> None:
        tokens = {check_lock(f"intent-{n}").token for n in range(5)}

        assert len(tokens) == 5

    def test_duplicate_lock_cannot_complete_release_fail_or_extend(
        self, onceonly_store: StoreUnderTest
    ) -> None:
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
        record = onceonly_store.record("k")
        assert record is not None
        assert record.status == "in_progress"
        assert record.owner_token == owner.token

    def test_complete_stores_result_and_later_claims_replay_it(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        lock = check_lock("charge_order_7")
        lock.complete({"charge_id": "ch_1", "amount": 1250, "items": [1, 2]})

        record = onceonly_store.record("charge_order_7")
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
        self, onceonly_store: StoreUnderTest, value: Any
    ) -> None:
        check_lock("falsy").complete(value)

        record = onceonly_store.record("falsy")
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
    def test_text_that_only_looks_like_an_escape_round_trips(
        self, onceonly_store: StoreUnderTest, value: Any
    ) -> None:
        check_lock("text").complete(value)

        assert check_lock("text").result == value

    def test_completing_twice_is_refused(self, onceonly_store: StoreUnderTest) -> None:
        lock = check_lock("k")
        lock.complete(1)

        with pytest.raises(LockLost, match="already finished"):
            lock.complete(2)
        record = onceonly_store.record("k")
        assert record is not None
        assert record.result == 1

    def test_release_lets_the_next_claim_run(self, onceonly_store: StoreUnderTest) -> None:
        first = check_lock("k")
        first.release()

        assert onceonly_store.record("k") is None
        second = check_lock("k")
        assert second.locked
        assert second.token != first.token

    def test_fail_blocks_until_released(self, onceonly_store: StoreUnderTest) -> None:
        lock = check_lock("k")
        lock.fail(ValueError("card declined"))

        record = onceonly_store.record("k")
        assert record is not None
        assert record.status == "failed"
        assert record.error == "ValueError: card declined"
        blocked = check_lock("k")
        assert blocked.duplicate
        assert blocked.record_status == "failed"
        assert blocked.error == "ValueError: card declined"
        assert blocked.retry_after is None

        assert onceonly_store.store.force_release("", "k") is True
        assert check_lock("k").locked

    def test_failed_record_blocks_until_it_expires(self, onceonly_store: StoreUnderTest) -> None:
        check_lock("k", ttl=SHORT).fail("provider said no")
        assert check_lock("k").record_status == "failed"

        time.sleep(PAST_SHORT)

        retry = check_lock("k")
        assert retry.locked
        record = onceonly_store.record("k")
        assert record is not None
        assert record.status == "in_progress"
        assert record.error == ""

    def test_fail_with_outcome_unknown_blocks_and_never_expires(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        lock = check_lock("k", ttl=SHORT)
        lock.fail(TimeoutError("provider timed out"), outcome_unknown=True)

        record = onceonly_store.record("k")
        assert record is not None
        assert record.status == "unknown"
        assert record.expires_at is None
        time.sleep(PAST_SHORT)
        blocked = check_lock("k", ttl=SHORT)
        assert blocked.duplicate
        assert blocked.record_status == "unknown"
        assert blocked.error == "TimeoutError: provider timed out"

    def test_extend_pushes_the_lease(self, onceonly_store: StoreUnderTest) -> None:
        lock = check_lock("k", lease=SHORT)
        before = onceonly_store.record("k")
        assert before is not None
        assert before.lease_expires_at is not None

        lock.extend(60)

        after = onceonly_store.record("k")
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

    def test_extend_refuses_a_non_positive_span(self, onceonly_store: StoreUnderTest) -> None:
        lock = check_lock("k", lease=60)
        before = onceonly_store.record("k")

        with pytest.raises(ValueError, match="seconds must be"):
            lock.extend(0)
        assert onceonly_store.record("k") == before

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
        self, onceonly_store: StoreUnderTest, settings: Any, operation: str, call: Any
    ) -> None:
        settings.ONCEONLY_AFTER_LEASE = "reclaim"
        old, new = _stale_owner_and_successor("k")
        before = onceonly_store.record("k")

        with pytest.raises(LockLost, match="this owner no longer holds it"):
            call(old)

        after = onceonly_store.record("k")
        assert after == before
        assert after is not None
        assert after.owner_token == new.token
        assert after.status == "in_progress"
        assert after.result is None
        new.complete("new owner's result")
        assert check_lock("k").result == "new owner's result"

    def test_stale_owner_cannot_overwrite_a_completed_record(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        old, new = _stale_owner_and_successor("k")
        new.complete("first real result")

        calls: list[Callable[[], None]] = [
            lambda: old.complete("late"),
            old.release,
            lambda: old.fail("late"),
        ]
        for call in calls:
            with pytest.raises(LockLost):
                call()

        record = onceonly_store.record("k")
        assert record is not None
        assert record.status == "completed"
        assert record.result == "first real result"
        assert record.owner_token == new.token

    def test_released_owner_cannot_act_after_someone_else_claims(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        first = check_lock("k")
        assert onceonly_store.store.force_release("", "k")
        second = check_lock("k")

        with pytest.raises(LockLost):
            first.complete("late")
        record = onceonly_store.record("k")
        assert record is not None
        assert record.owner_token == second.token
        assert record.status == "in_progress"

    def test_stale_lease_is_reclaimed_by_the_next_claim(
        self, onceonly_store: StoreUnderTest, settings: Any, sent: SignalLog
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
        record = onceonly_store.record("k")
        assert record is not None
        assert record.status == "in_progress"
        assert record.owner_token == lock.token

    def test_stale_lease_with_hold_turns_unknown_and_is_not_retried(
        self, onceonly_store: StoreUnderTest, settings: Any, sent: SignalLog
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
        record = onceonly_store.record("k")
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
        self, onceonly_store: StoreUnderTest, settings: Any
    ) -> None:
        # With "hold" nobody took the key over: the owner was slow, not replaced, so its
        # real outcome is better than "unknown" (stores/base.py, Fencing).
        settings.ONCEONLY_AFTER_LEASE = "hold"
        slow = check_lock("k", lease=SHORT)
        time.sleep(PAST_SHORT)
        assert check_lock("k").record_status == "unknown"

        slow.complete("sent after all")

        assert check_lock("k").result == "sent after all"

    def test_fingerprint_mismatch_raises_and_never_runs_again(
        self, onceonly_store: StoreUnderTest
    ) -> None:
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
        record = onceonly_store.record("order-9")
        assert record is not None
        assert record.fingerprint == "sha256:aaa"
        assert record.result == {"ok": True}

    def test_fingerprint_mismatch_while_in_progress(self, onceonly_store: StoreUnderTest) -> None:
        owner = check_lock("order-9", fingerprint="a", lease=60)

        with pytest.raises(FingerprintMismatch):
            check_lock("order-9", fingerprint="b")

        same = check_lock("order-9", fingerprint="a")
        assert same.duplicate
        assert same.record_status == "in_progress"
        record = onceonly_store.record("order-9")
        assert record is not None
        assert record.owner_token == owner.token

    def test_stale_lease_is_not_reclaimed_by_a_different_fingerprint(
        self, onceonly_store: StoreUnderTest, settings: Any
    ) -> None:
        settings.ONCEONLY_AFTER_LEASE = "reclaim"
        old = check_lock("order-9", fingerprint="a", lease=SHORT)
        time.sleep(PAST_SHORT)

        with pytest.raises(FingerprintMismatch):
            check_lock("order-9", fingerprint="b")

        record = onceonly_store.record("order-9")
        assert record is not None
        assert record.owner_token == old.token
        assert record.fingerprint == "a"

    def test_claim_without_fingerprint_is_a_plain_duplicate(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        check_lock("order-9", fingerprint="a").complete(5)

        assert check_lock("order-9").result == 5

    def test_finished_record_past_its_ttl_counts_as_absent(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        first = check_lock("k", ttl=SHORT, fingerprint="a")
        first.complete("old result")
        check_lock("k")  # one duplicate blocked while it was alive
        time.sleep(PAST_SHORT)

        fresh = check_lock("k", fingerprint="b")

        assert fresh.locked
        assert fresh.result is None
        record = onceonly_store.record("k")
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

    def test_ttl_none_keeps_the_record_forever(
        self, onceonly_store: StoreUnderTest, settings: Any
    ) -> None:
        settings.ONCEONLY_TTL = None
        check_lock("k").complete(1)

        record = onceonly_store.record("k")
        assert record is not None
        assert record.expires_at is None
        assert check_lock("k").result == 1

    def test_ttl_defaults_to_the_setting(
        self, onceonly_store: StoreUnderTest, settings: Any
    ) -> None:
        settings.ONCEONLY_TTL = SHORT
        check_lock("k").complete(1)
        assert check_lock("k").duplicate

        time.sleep(PAST_SHORT)

        assert check_lock("k").locked

    def test_duplicates_are_counted_and_logged(
        self, onceonly_store: StoreUnderTest, caplog: pytest.LogCaptureFixture
    ) -> None:
        check_lock("k").complete("r")
        record = onceonly_store.record("k")
        assert record is not None
        assert record.duplicates_blocked == 0
        assert record.last_duplicate_at is None

        with caplog.at_level(logging.INFO, logger="django_onceonly"):
            for _ in range(3):
                check_lock("k")

        record = onceonly_store.record("k")
        assert record is not None
        assert record.duplicates_blocked == 3
        assert record.last_duplicate_at is not None
        assert record.completed_at is not None
        assert record.last_duplicate_at >= record.completed_at
        blocked = [r for r in caplog.records if "duplicate blocked" in r.getMessage()]
        assert len(blocked) == 3
        assert all("'k'" in r.getMessage() for r in blocked)

    def test_reading_a_record_counts_no_duplicate(self, onceonly_store: StoreUnderTest) -> None:
        check_lock("k")
        for _ in range(3):
            onceonly_store.record("k")

        record = onceonly_store.record("k")
        assert record is not None
        assert record.duplicates_blocked == 0

    def test_same_key_in_two_scopes_is_two_intents(self, onceonly_store: StoreUnderTest) -> None:
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
        record_a = onceonly_store.record("invoice-1", scope="tenant-a")
        assert record_a is not None
        assert record_a.result == "a"
        assert record_a.scope == "tenant-a"

    def test_keys_differing_only_by_case_or_trailing_space_are_distinct(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        variants = ["Order-1", "order-1", "ORDER-1", "Order-1 ", "Order-1  ", " Order-1", "Ordér-1"]

        locks = [check_lock(key) for key in variants]

        assert all(lock.locked for lock in locks)
        for key, lock in zip(variants, locks, strict=True):
            lock.complete(key)
        for key in variants:
            record = onceonly_store.record(key)
            assert record is not None
            assert record.key == key
            assert record.result == key
            assert check_lock(key).result == key

    def test_scopes_differing_only_by_case_are_distinct(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        assert check_lock("k", scope="Tenant").locked
        assert check_lock("k", scope="tenant").locked
        assert check_lock("k", scope="tenant ").locked

    def test_longest_key_and_unicode_round_trip(self, onceonly_store: StoreUnderTest) -> None:
        key = "é" * 200 + "🙂" * 55
        assert len(key) == 255

        check_lock(key, scope="ü" * 255).complete("ok")

        record = onceonly_store.record(key, scope="ü" * 255)
        assert record is not None
        assert record.key == key
        assert check_lock(key, scope="ü" * 255).result == "ok"

    def test_metadata_is_kept_with_the_record(self, onceonly_store: StoreUnderTest) -> None:
        check_lock("k", metadata={"user_id": 7, "source": "signup"})

        record = onceonly_store.record("k")
        assert record is not None
        assert record.metadata == {"user_id": 7, "source": "signup"}

    def test_context_manager_completes_with_none_on_normal_exit(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        with check_lock("k") as lock:
            assert lock.locked

        record = onceonly_store.record("k")
        assert record is not None
        assert record.status == "completed"
        assert record.result is None
        replay = check_lock("k")
        assert replay.record_status == "completed"
        assert replay.result is None

    def test_context_manager_keeps_an_explicit_result(self, onceonly_store: StoreUnderTest) -> None:
        with check_lock("k") as lock:
            lock.complete({"id": 3})

        record = onceonly_store.record("k")
        assert record is not None
        assert record.result == {"id": 3}

    def test_context_manager_releases_on_exception_and_reraises(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        with pytest.raises(ConnectionError, match="provider down"), check_lock("k"):
            raise ConnectionError("provider down")

        assert onceonly_store.record("k") is None
        assert check_lock("k").locked

    def test_context_manager_fails_on_exception_with_on_error_fail(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        with pytest.raises(ValueError, match="bad address"), check_lock("k", on_error="fail"):
            raise ValueError("bad address")

        record = onceonly_store.record("k")
        assert record is not None
        assert record.status == "failed"
        assert record.error == "ValueError: bad address"
        assert check_lock("k").record_status == "failed"

    def test_context_manager_does_nothing_for_a_duplicate(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        owner = check_lock("k", lease=60)
        before = onceonly_store.record("k")

        with check_lock("k") as duplicate:
            assert duplicate.duplicate
        with pytest.raises(RuntimeError), check_lock("k", on_error="fail"):
            raise RuntimeError("boom")

        after = onceonly_store.record("k")
        assert after is not None
        assert before is not None
        assert after.status == "in_progress"
        assert after.owner_token == owner.token
        assert after.result is None
        assert after.duplicates_blocked == before.duplicates_blocked + 2

    def test_context_manager_after_explicit_release_does_nothing(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        with check_lock("k") as lock:
            lock.release()

        assert onceonly_store.record("k") is None

    def test_each_signal_fires_exactly_once_per_event(
        self, onceonly_store: StoreUnderTest, sent: SignalLog
    ) -> None:
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

    def test_context_manager_sends_one_signal_per_outcome(
        self, onceonly_store: StoreUnderTest, sent: SignalLog
    ) -> None:
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

    def test_refused_operations_send_no_signal(
        self, onceonly_store: StoreUnderTest, sent: SignalLog
    ) -> None:
        old, _new = _stale_owner_and_successor("k")
        sent.clear()

        calls: list[Callable[[], None]] = [
            lambda: old.complete(1),
            old.release,
            lambda: old.fail("x"),
        ]
        for call in calls:
            with pytest.raises(LockLost):
                call()

        assert sent.names() == []

    @pytest.mark.parametrize("outcome", ["completed", "failed", "unknown"])
    def test_release_if_unchanged_deletes_the_finished_record_seen(
        self, onceonly_store: StoreUnderTest, outcome: str
    ) -> None:
        lock = check_lock("k")
        if outcome == "completed":
            lock.complete("sent")
        else:
            lock.fail("no", outcome_unknown=outcome == "unknown")
        seen = _seen(onceonly_store, "k")

        released = onceonly_store.store.release_if_unchanged(
            "",
            "k",
            owner_token=seen.owner_token,
            status=outcome,
            allow_live=False,
            now=timezone.now(),
        )

        assert released is True
        assert onceonly_store.record("k") is None
        assert check_lock("k").locked

    def test_release_if_unchanged_leaves_another_owner_or_status_alone(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        lock = check_lock("k", lease=60)
        seen = _seen(onceonly_store, "k")
        now = timezone.now()

        assert not onceonly_store.store.release_if_unchanged(
            "", "k", owner_token="0" * 32, status="in_progress", allow_live=True, now=now
        )
        assert not onceonly_store.store.release_if_unchanged(
            "", "k", owner_token=seen.owner_token, status="completed", allow_live=True, now=now
        )
        assert not onceonly_store.store.release_if_unchanged(
            "",
            "other",
            owner_token=seen.owner_token,
            status="in_progress",
            allow_live=True,
            now=now,
        )
        assert onceonly_store.record("k") == seen
        lock.complete("the owner finished")
        assert check_lock("k").result == "the owner finished"

    def test_release_if_unchanged_leaves_a_live_lease_alone_unless_allowed(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        check_lock("k", lease=60)
        seen = _seen(onceonly_store, "k")
        assert seen.lease_expires_at is not None

        def release(*, allow_live: bool, now: dt.datetime) -> bool:
            return onceonly_store.store.release_if_unchanged(
                "",
                "k",
                owner_token=seen.owner_token,
                status="in_progress",
                allow_live=allow_live,
                now=now,
            )

        assert release(allow_live=False, now=timezone.now()) is False
        assert onceonly_store.record("k") == seen
        # At a `now` past the lease end the same claim is stale: released.
        assert release(allow_live=False, now=seen.lease_expires_at) is True
        assert onceonly_store.record("k") is None
        check_lock("k", lease=60)
        seen = _seen(onceonly_store, "k")
        assert release(allow_live=True, now=timezone.now()) is True
        assert onceonly_store.record("k") is None

    def test_finish_refuses_a_status_that_does_not_finish_a_record(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        lock = check_lock("k", lease=60)
        seen = _seen(onceonly_store, "k")

        with pytest.raises(ValueError, match="cannot finish with status 'in_progress'"):
            onceonly_store.store.finish(
                "",
                "k",
                lock.token or "",
                status="in_progress",
                result_json=None,
                error="",
                now=timezone.now(),
                expires_at=None,
            )
        assert onceonly_store.record("k") == seen

    def test_transactional_claims_follow_supports_transactions(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        if onceonly_store.store.supports_transactions:
            # Outside an atomic block the claim simply commits.
            assert check_lock("k", transactional=True).locked
            return

        with pytest.raises(ValueError, match="transactional=True is not possible"):
            check_lock("k", transactional=True)

        assert onceonly_store.record("k") is None

    def test_release_if_unchanged_refuses_a_status_no_record_has(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        check_lock("k")
        seen = _seen(onceonly_store, "k")

        with pytest.raises(ValueError, match="no record has the status 'done'"):
            onceonly_store.store.release_if_unchanged(
                "",
                "k",
                owner_token=seen.owner_token,
                status="done",
                allow_live=True,
                now=timezone.now(),
            )
        assert onceonly_store.record("k") == seen

    def test_release_if_unchanged_never_releases_a_claim_that_took_the_key_over(
        self, onceonly_store: StoreUnderTest, settings: Any
    ) -> None:
        # The window of a check-then-delete: the operator is shown a stale claim, a new claim
        # takes the key over, then the release arrives. It must find the record changed.
        settings.ONCEONLY_AFTER_LEASE = "reclaim"
        check_lock("k", lease=SHORT)
        time.sleep(PAST_SHORT)
        seen = _seen(onceonly_store, "k")
        successor = check_lock("k", lease=60)
        assert successor.locked

        released = onceonly_store.store.release_if_unchanged(
            "",
            "k",
            owner_token=seen.owner_token,
            status=seen.status,
            allow_live=False,
            now=timezone.now(),
        )

        assert released is False
        record = _seen(onceonly_store, "k")
        assert record.owner_token == successor.token
        successor.complete("the successor's result")
        assert check_lock("k").result == "the successor's result"

    # -- resume (a Celery retry takes over its own claim) -----------------------------------

    def test_resuming_own_claim_is_locked_under_a_new_token_and_refreshes_the_lease(
        self,
        onceonly_store: StoreUnderTest,
    ) -> None:
        first = check_lock("resume-1", lease=5, task_name="t", task_id="id-1")
        before = onceonly_store.record("resume-1")
        assert before is not None
        assert before.lease_expires_at is not None

        resumed = check_lock("resume-1", lease=600, _resume_token=first.token or "")

        assert resumed.locked
        assert resumed.token not in (None, first.token)
        after = onceonly_store.record("resume-1")
        assert after is not None
        assert after.status == "in_progress"
        assert after.owner_token == resumed.token
        assert after.lease_expires_at is not None
        assert after.lease_expires_at > before.lease_expires_at
        # The hand-over is not a duplicate and keeps what the first claim recorded.
        assert after.duplicates_blocked == 0
        assert after.created_at == before.created_at
        assert (after.task_name, after.task_id) == ("t", "id-1")

    def test_after_a_resume_the_old_token_is_fenced(self, onceonly_store: StoreUnderTest) -> None:
        first = check_lock("resume-2")
        resumed = check_lock("resume-2", _resume_token=first.token or "")

        with pytest.raises(LockLost):
            first.complete("stale owner")
        with pytest.raises(LockLost):
            first.extend(60)
        with pytest.raises(LockLost):
            first.release()

        resumed.complete("new owner")
        record = onceonly_store.record("resume-2")
        assert record is not None
        assert (record.status, record.result) == ("completed", "new owner")

    def test_resuming_the_same_token_twice_gives_one_owner(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        # A redelivered copy of a retry message carries the same old token.
        first = check_lock("resume-3")
        second = check_lock("resume-3", _resume_token=first.token or "")
        third = check_lock("resume-3", _resume_token=first.token or "")

        assert second.locked
        assert third.duplicate
        assert third.record_status == "in_progress"
        record = onceonly_store.record("resume-3")
        assert record is not None
        assert record.owner_token == second.token
        assert record.duplicates_blocked == 1

    def test_resuming_with_someone_elses_token_is_a_duplicate(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        owner = check_lock("resume-4")
        stranger = check_lock("resume-4", _resume_token="0" * 32)

        assert stranger.duplicate
        assert stranger.record_status == "in_progress"
        record = onceonly_store.record("resume-4")
        assert record is not None
        assert record.owner_token == owner.token

    @pytest.mark.parametrize("outcome", ["complete", "fail", "unknown"])
    def test_resuming_a_finished_record_is_a_duplicate(
        self, onceonly_store: StoreUnderTest, outcome: str
    ) -> None:
        first = check_lock("resume-5")
        if outcome == "complete":
            first.complete({"sent": True})
        else:
            first.fail("provider said no", outcome_unknown=outcome == "unknown")

        again = check_lock("resume-5", _resume_token=first.token or "")

        assert again.duplicate
        assert (
            again.record_status
            == {
                "complete": "completed",
                "fail": "failed",
                "unknown": "unknown",
            }[outcome]
        )
        if outcome == "complete":
            assert again.result == {"sent": True}

    def test_resuming_a_released_key_claims_it_afresh(self, onceonly_store: StoreUnderTest) -> None:
        first = check_lock("resume-6")
        first.release()

        again = check_lock("resume-6", _resume_token=first.token or "")

        assert again.locked
        record = onceonly_store.record("resume-6")
        assert record is not None
        assert record.owner_token == again.token

    @pytest.mark.parametrize("after_lease", ["reclaim", "hold"])
    def test_resuming_own_stale_lease_is_locked_whatever_the_policy(
        self, onceonly_store: StoreUnderTest, settings: Any, after_lease: str
    ) -> None:
        # The owner said "retry later"; nobody else acted on the lease meanwhile, so the
        # outcome is known (not done) and the retry may go ahead under either policy.
        settings.ONCEONLY_AFTER_LEASE = after_lease
        first = check_lock("resume-7", lease=SHORT)
        time.sleep(PAST_SHORT)

        resumed = check_lock("resume-7", lease=60, _resume_token=first.token or "")

        assert resumed.locked
        record = onceonly_store.record("resume-7")
        assert record is not None
        assert record.status == "in_progress"
        assert record.owner_token == resumed.token

    def test_resuming_a_lease_someone_else_took_over_is_a_duplicate(
        self, onceonly_store: StoreUnderTest, settings: Any
    ) -> None:
        settings.ONCEONLY_AFTER_LEASE = "reclaim"
        first = check_lock("resume-8", lease=SHORT)
        time.sleep(PAST_SHORT)
        successor = check_lock("resume-8", lease=60)
        assert successor.locked

        late = check_lock("resume-8", _resume_token=first.token or "")

        assert late.duplicate
        record = onceonly_store.record("resume-8")
        assert record is not None
        assert record.owner_token == successor.token
