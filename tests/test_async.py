"""``acheck_lock`` and the ``Lock``'s async twins, from ``async def`` code, on every store."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from django_onceonly import Lock, LockLost, acheck_lock, check_lock
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores.database import close_connections
from tests.conftest import Backend, backend_params


@pytest.fixture(autouse=True)
def _close_executor_connections() -> Iterator[None]:
    # sync_to_async runs the store calls in asgiref's executor thread, which opens
    # connections of its own: close them there so the test database can be dropped.
    yield

    def close() -> None:
        connections.close_all()
        close_connections()

    asyncio.run(sync_to_async(close)())


def test_acheck_lock_claims_and_acomplete_stores_the_result(backend: Backend) -> None:
    async def main() -> tuple[Lock, Lock]:
        first = await acheck_lock("welcome_email_1", ttl=60)
        assert first.locked
        await first.acomplete({"message_id": "m-1"})
        return first, await acheck_lock("welcome_email_1")

    first, second = asyncio.run(main())

    assert first.record_status == "completed"
    assert second.duplicate
    assert second.result == {"message_id": "m-1"}
    record = backend.record("welcome_email_1")
    assert record is not None
    assert record.status == "completed"


def test_arelease_gives_the_key_back(backend: Backend) -> None:
    async def main() -> Lock:
        lock = await acheck_lock("k")
        await lock.arelease()
        return await acheck_lock("k")

    assert asyncio.run(main()).locked


def test_afail_stores_a_failure_and_an_unknown_outcome(backend: Backend) -> None:
    async def main() -> None:
        failed = await acheck_lock("failed")
        await failed.afail(ValueError("card declined"))
        unknown = await acheck_lock("unknown")
        await unknown.afail(TimeoutError("no answer"), outcome_unknown=True)

    asyncio.run(main())

    failed, unknown = backend.record("failed"), backend.record("unknown")
    assert failed is not None
    assert (failed.status, failed.error) == ("failed", "ValueError: card declined")
    assert unknown is not None
    assert unknown.status == "unknown"


def test_aextend_pushes_the_lease_and_a_duplicate_cannot(backend: Backend) -> None:
    async def main() -> tuple[Lock, Lock]:
        lock = await acheck_lock("k", lease=5)
        before = lock.lease_expires_at
        await lock.aextend(600)
        assert before is not None
        assert lock.lease_expires_at is not None
        assert (lock.lease_expires_at - before).total_seconds() > 500
        duplicate = await acheck_lock("k")
        with pytest.raises(LockLost):
            await duplicate.aextend(600)
        return lock, duplicate

    lock, duplicate = asyncio.run(main())

    record = backend.record("k")
    assert record is not None
    assert record.lease_expires_at == lock.lease_expires_at
    assert duplicate.retry_after is not None
    assert duplicate.retry_after > 500


def test_acheck_lock_refuses_bad_input_like_check_lock(backend: Backend) -> None:
    with pytest.raises(ValueError, match="ttl must be a positive number of seconds"):
        asyncio.run(acheck_lock("k", ttl=float("inf")))

    assert backend.record("k") is None


@pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)
def test_the_event_loop_runs_while_a_claim_waits_for_the_store(
    backend: Backend, settings: Any
) -> None:
    # A claim that has to wait (here: it takes over a stale lease while another
    # transaction holds the record's row lock; a duplicate check would not wait, it only
    # reads) must not block the event loop: a ticker keeps running, and it is the ticker
    # that lets the other transaction finish. A blocked loop would never get there.
    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    check_lock("k", lease=0.001)
    time.sleep(0.05)  # past the lease
    locked, release = threading.Event(), threading.Event()

    def hold_row_lock() -> None:
        try:
            from django.db import transaction

            with transaction.atomic(using=backend.alias):
                IdempotencyRecord.objects.using(backend.alias).select_for_update().get(key="k")
                locked.set()
                release.wait(timeout=20)
        finally:
            connections[backend.alias].close()

    holder = threading.Thread(target=hold_row_lock)
    holder.start()
    assert locked.wait(timeout=10)
    ticks = 0
    ticks_at_answer = -1

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks == 20:
                release.set()

    async def main() -> Lock:
        nonlocal ticks_at_answer
        task = asyncio.create_task(ticker())
        lock = await acheck_lock("k")
        ticks_at_answer = ticks
        task.cancel()
        return lock

    try:
        lock = asyncio.run(main())
    finally:
        release.set()
        holder.join()

    assert lock.locked  # the stale lease, taken over once the row lock was released
    assert ticks_at_answer >= 20
