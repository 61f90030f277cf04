"""``check_locks``: many keys in one round trip, with every rule of ``check_lock``."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from django_onceonly import InvalidKey, StoreUnavailable, check_lock, check_locks
from django_onceonly import batch as batch_module
from django_onceonly.stores import DatabaseStore
from django_onceonly.stores.base import ClaimRequest, ClaimResult
from django_onceonly.stores.database import close_connections
from tests.conftest import Backend, backend_params


def test_a_batch_of_new_keys_is_all_locked_and_each_lock_completes(backend: Backend) -> None:
    keys = [f"newsletter_42_user_{n}" for n in range(25)]

    locks = check_locks(keys, ttl=3600, metadata={"campaign": 42})

    assert [lock.key for lock in locks] == keys
    assert all(lock.locked for lock in locks)
    assert len({lock.token for lock in locks}) == 25
    for n, lock in enumerate(locks):
        lock.complete({"sent": n})
    record = backend.record("newsletter_42_user_7")
    assert record is not None
    assert (record.status, record.result, record.metadata) == (
        "completed",
        {"sent": 7},
        {"campaign": 42},
    )


def test_a_mixed_batch_answers_each_key_as_check_lock_would(backend: Backend) -> None:
    check_lock("done").complete({"message_id": "m-1"})
    running = check_lock("running", lease=600)

    locks = check_locks(["new-1", "done", "running", "new-2"])

    assert [lock.status for lock in locks] == ["locked", "duplicate", "duplicate", "locked"]
    assert locks[1].result == {"message_id": "m-1"}
    assert locks[1].record_status == "completed"
    assert locks[2].record_status == "in_progress"
    assert locks[2].retry_after is not None
    assert locks[2].retry_after > 500
    assert locks[2].token is None
    done, still_running = backend.record("done"), backend.record("running")
    assert done is not None
    assert done.duplicates_blocked == 1
    assert still_running is not None
    assert (still_running.owner_token, still_running.duplicates_blocked) == (running.token, 1)


def test_expired_records_and_stale_leases_in_a_batch_are_taken_over(
    backend: Backend, settings: Any
) -> None:
    check_lock("expired", ttl=0.001).complete("old")
    crashed = check_lock("crashed", lease=0.001)
    check_lock("held", lease=0.001)
    import time

    time.sleep(0.01)

    locks = check_locks(["expired", "crashed"])

    assert [lock.status for lock in locks] == ["locked", "locked"]
    record = backend.record("crashed")
    assert record is not None
    assert record.owner_token == locks[1].token != crashed.token

    settings.ONCEONLY_AFTER_LEASE = "hold"
    (held,) = check_locks(["held"])
    assert held.duplicate
    assert held.record_status == "unknown"


def test_the_same_key_twice_is_refused_and_nothing_is_written(backend: Backend) -> None:
    with pytest.raises(ValueError, match="check_locks\\(\\) got the same key more than once"):
        check_locks(["a", "b", "a"])

    assert backend.record("a") is None
    assert backend.record("b") is None


def test_one_invalid_key_refuses_the_whole_batch_before_anything_is_written(
    backend: Backend,
) -> None:
    with pytest.raises(InvalidKey, match="key contains the control character"):
        check_locks(["ok-1", "bad\x00key", "ok-2"])
    with pytest.raises(ValueError, match="ttl must be a positive number of seconds"):
        check_locks(["ok-1"], ttl=float("inf"))

    assert backend.record("ok-1") is None


def test_a_batch_larger_than_one_round_trip_is_split_and_answered_in_order(
    backend: Backend,
) -> None:
    keys = [f"k{n:04d}" for n in range(batch_module.MAX_BATCH * 2 + 7)]
    check_lock("k0600").complete("earlier")

    locks = check_locks(keys)

    assert [lock.key for lock in locks] == keys
    assert Counter(lock.status for lock in locks) == {"locked": len(keys) - 1, "duplicate": 1}
    assert locks[600].result == "earlier"


class FailingOnKey(DatabaseStore):
    """The real database store, with one fault: a batch naming ``boom`` fails."""

    def _claim_many(self, requests: list[ClaimRequest]) -> list[ClaimResult]:
        if any(request.key == "boom" for request in requests):
            raise StoreUnavailable("database went away")
        return super()._claim_many(requests)


@pytest.mark.django_db(transaction=True)
def test_a_failure_in_a_later_round_trip_releases_what_the_batch_claimed(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.ONCEONLY_STORE = f"{__name__}.FailingOnKey"
    monkeypatch.setattr(batch_module, "MAX_BATCH", 2)

    with pytest.raises(StoreUnavailable, match="database went away"):
        check_locks(["a", "b", "c", "boom"])

    # The first round trip claimed a and b; nothing is left claimed that nobody holds.
    assert [lock.locked for lock in check_locks(["a", "b", "c"])] == [True, True, True]


def test_the_run_policy_gives_unprotected_locks_when_the_store_is_down(
    settings: Any,
) -> None:
    settings.ONCEONLY_STORE = f"{__name__}.FailingOnKey"
    settings.ONCEONLY_ON_STORE_ERROR = "run"

    locks = check_locks(["boom", "x"])

    assert all(lock.locked and lock.unprotected for lock in locks)


def test_overlapping_batches_in_threads_lock_each_key_exactly_once(backend: Backend) -> None:
    # Threads claim overlapping batches in opposite orders: every key ends up locked by
    # exactly one thread, and no batch deadlocks (the rows are written in key order).
    trials, threads, width = (10 if backend.name == "sqlite" else 30), 4, 20
    for trial in range(trials):
        keys = [f"t{trial}-{n}" for n in range(width)]
        winners: Counter[str] = Counter()
        errors: list[BaseException] = []
        barrier = threading.Barrier(threads)

        def claim(
            offset: int,
            keys: list[str] = keys,
            winners: Counter[str] = winners,
            errors: list[BaseException] = errors,
            barrier: threading.Barrier = barrier,
        ) -> None:
            try:
                mine = keys[offset:] + keys[:offset]
                if offset % 2:
                    mine.reverse()
                barrier.wait()
                for lock in check_locks(mine):
                    if lock.locked:
                        winners[lock.key] += 1
            except BaseException as exc:
                errors.append(exc)
            finally:
                close_connections()
                connections.close_all()

        workers = [threading.Thread(target=claim, args=(n * 5,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert errors == []
        assert winners == Counter({key: 1 for key in keys}), f"trial {trial}"
    print(f"{backend.name}: {trials} trials x {threads} threads x {width} keys, one winner each")


def test_locks_from_a_batch_work_as_context_managers(backend: Backend) -> None:
    sent: list[str] = []
    for lock in check_locks(["w1", "w2"]):
        with lock:
            if lock.duplicate:
                continue
            sent.append(lock.key)

    assert sent == ["w1", "w2"]
    assert all(lock.duplicate for lock in check_locks(["w1", "w2"]))
    record = backend.record("w2")
    assert record is not None
    assert record.completed_at is not None
    assert record.completed_at <= timezone.now() + dt.timedelta(seconds=1)


@pytest.mark.parametrize("backend", backend_params("redis"), indirect=True)
def test_a_batch_after_redis_forgot_its_scripts_still_claims_every_key(backend: Backend) -> None:
    # The pipeline sends EVALSHA without asking SCRIPT EXISTS first; after a restart or a
    # SCRIPT FLUSH each call answers NOSCRIPT (it did not run) and is run again singly.
    backend.store.connection.script_flush()  # type: ignore[attr-defined]

    locks = check_locks(["s1", "s2", "s3"])

    assert [lock.locked for lock in locks] == [True, True, True]
    assert [lock.duplicate for lock in check_locks(["s1", "s2", "s3"])] == [True, True, True]
