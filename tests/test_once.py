"""``@once`` on plain and ``async def`` functions.

Real side effects are counted in a list: "did not run" means the list did not grow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from django_onceonly import InProgress, IntentBlocked, check_lock, once
from django_onceonly.keys import hash_arguments
from django_onceonly.stores.database import close_connections
from tests.conftest import Backend


@pytest.fixture(autouse=True)
def _close_executor_connections() -> Iterator[None]:
    # Outside an async_to_sync caller, sync_to_async runs the store calls in asgiref's
    # one executor thread, which opens connections of its own. Close them there, or the
    # test database cannot be dropped at the end of the run.
    yield

    def close() -> None:
        connections.close_all()
        close_connections()

    asyncio.run(sync_to_async(close)())


def test_first_call_runs_and_later_calls_return_the_stored_value(backend: Backend) -> None:
    sent: list[int] = []

    @once(key="welcome_email_{user_id}")
    def send_welcome_email(user_id: int) -> dict[str, Any]:
        sent.append(user_id)
        return {"message_id": f"m-{user_id}-{len(sent)}"}

    first = send_welcome_email(7)
    again = [send_welcome_email(7) for _ in range(3)]

    assert sent == [7]
    assert first == {"message_id": "m-7-1"}
    assert again == [first, first, first]
    record = backend.record("welcome_email_7")
    assert record is not None
    assert record.status == "completed"
    assert record.result == first
    assert record.duplicates_blocked == 3


def test_different_arguments_are_different_intents(backend: Backend) -> None:
    sent: list[int] = []

    @once(key="welcome_email_{user_id}")
    def send_welcome_email(user_id: int) -> int:
        sent.append(user_id)
        return user_id

    assert [send_welcome_email(n) for n in (1, 2, 1, 3, 2)] == [1, 2, 1, 3, 2]
    assert sent == [1, 2, 3]


@pytest.mark.parametrize("value", [None, 0, False, {}, [], ""], ids=repr)
def test_a_falsy_return_value_is_replayed_without_running(backend: Backend, value: Any) -> None:
    runs: list[int] = []

    @once(key="falsy")
    def work() -> Any:
        runs.append(1)
        return value

    assert work() == value
    replay = work()

    assert runs == [1]
    assert replay == value
    assert type(replay) is type(value)


def test_positional_and_keyword_calls_give_one_key(backend: Backend) -> None:
    sent: list[tuple[int, str]] = []

    @once
    def notify(user_id: int, channel: str = "email") -> str:
        sent.append((user_id, channel))
        return f"{user_id}:{channel}"

    results = [
        notify(5),
        notify(5, "email"),
        notify(user_id=5),
        notify(5, channel="email"),
        notify(channel="email", user_id=5),
    ]

    assert sent == [(5, "email")]
    assert results == ["5:email"] * 5


def test_default_arguments_are_applied_to_the_key_template(backend: Backend) -> None:
    sent: list[str] = []

    @once(key="notify_{user_id}_{channel}")
    def notify(user_id: int, channel: str = "email") -> None:
        sent.append(channel)

    notify(5)
    notify(5, "sms")

    assert sent == ["email", "sms"]
    assert backend.record("notify_5_email") is not None
    assert backend.record("notify_5_sms") is not None


def test_key_may_be_a_callable_taking_the_functions_arguments(backend: Backend) -> None:
    sent: list[str] = []

    def key_for(order: dict[str, Any], *, amount: int) -> str:
        return f"charge_{order['id']}_{amount}"

    @once(key=key_for)
    def charge(order: dict[str, Any], *, amount: int) -> str:
        sent.append(order["id"])
        return f"ch_{order['id']}"

    assert charge({"id": "o1", "note": "first"}, amount=100) == "ch_o1"
    assert charge({"id": "o1", "note": "retry"}, amount=100) == "ch_o1"

    assert sent == ["o1"]
    record = backend.record("charge_o1_100")
    assert record is not None
    assert record.result == "ch_o1"


def test_default_key_is_the_qualified_name_plus_a_hash_of_the_arguments(
    backend: Backend,
) -> None:
    @once
    def notify(user_id: int, channel: str = "email") -> str:
        return channel

    notify(5)

    name = f"{__name__}.test_default_key_is_the_qualified_name_plus_a_hash_of_the_arguments.<locals>.notify"
    key = f"{name}:{hash_arguments({'user_id': 5, 'channel': 'email'})}"
    record = backend.record(key)
    assert record is not None
    assert record.result == "email"
    assert backend.record(f"{name}:{hash_arguments({'user_id': 6, 'channel': 'email'})}") is None


def test_name_replaces_the_qualified_name_in_the_default_key(backend: Backend) -> None:
    @once(name="emails.welcome")
    def send(user_id: int) -> int:
        return user_id

    @once(name="emails.welcome")
    def send_again_elsewhere(user_id: int) -> int:
        return -user_id

    assert send(1) == 1
    # Same name and arguments: the same intent, even from another function.
    assert send_again_elsewhere(1) == 1
    assert backend.record(f"emails.welcome:{hash_arguments({'user_id': 1})}") is not None


def test_once_passes_scope_and_ttl_through(backend: Backend) -> None:
    @once(key="k", scope="tenant-a", ttl=3600)
    def work() -> str:
        return "done"

    work()

    assert backend.record("k") is None
    record = backend.record("k", scope="tenant-a")
    assert record is not None
    assert record.expires_at is not None
    assert record.completed_at is not None
    assert 3590 <= (record.expires_at - record.completed_at).total_seconds() <= 3610


def test_call_while_another_runs_raises_in_progress_with_retry_after(backend: Backend) -> None:
    runs: list[int] = []
    running = check_lock("report_1", lease=60)

    @once(key="report_{n}")
    def build_report(n: int) -> int:
        runs.append(n)
        return n

    with pytest.raises(InProgress, match="key 'report_1' is being processed; retry after") as exc:
        build_report(1)

    assert runs == []
    assert exc.value.retry_after is not None
    assert 1 <= exc.value.retry_after <= 60
    assert exc.value.key == "report_1"
    record = backend.record("report_1")
    assert record is not None
    assert record.owner_token == running.token


def test_call_while_another_runs_returns_none_with_skip(backend: Backend) -> None:
    runs: list[int] = []
    check_lock("report_1", lease=60)

    @once(key="report_{n}", on_in_progress="skip")
    def build_report(n: int) -> int:
        runs.append(n)
        return n

    assert build_report(1) is None
    assert runs == []


def test_exception_releases_so_the_next_call_runs(backend: Backend) -> None:
    attempts: list[int] = []

    @once(key="sync_{n}")
    def sync(n: int) -> str:
        attempts.append(n)
        if len(attempts) == 1:
            raise ConnectionError("provider timed out before accepting")
        return "synced"

    with pytest.raises(ConnectionError, match="provider timed out"):
        sync(1)
    assert backend.record("sync_1") is None

    assert sync(1) == "synced"
    assert sync(1) == "synced"
    assert attempts == [1, 1]


def test_exception_with_on_error_fail_blocks_the_next_call(backend: Backend) -> None:
    attempts: list[int] = []

    @once(key="charge_{n}", on_error="fail")
    def charge(n: int) -> str:
        attempts.append(n)
        raise ValueError("card declined")

    with pytest.raises(ValueError, match="card declined"):
        charge(1)
    with pytest.raises(IntentBlocked, match="key 'charge_1' is blocked") as exc:
        charge(1)

    assert attempts == [1]
    assert exc.value.record_status == "failed"
    assert exc.value.error == "ValueError: card declined"
    assert backend.store.force_release("", "charge_1")
    with pytest.raises(ValueError, match="card declined"):
        charge(1)
    assert attempts == [1, 1]


def test_unknown_outcome_blocks_with_intent_blocked(backend: Backend) -> None:
    runs: list[int] = []
    check_lock("k").fail(TimeoutError("no answer"), outcome_unknown=True)

    @once(key="k")
    def work() -> int:
        runs.append(1)
        return 1

    with pytest.raises(IntentBlocked) as exc:
        work()

    assert runs == []
    assert exc.value.record_status == "unknown"


# -- interrupted runs: left to the lease, like a crash (docs/concepts.md) ----------------


def test_keyboard_interrupt_leaves_the_claim_to_its_lease(backend: Backend) -> None:
    runs: list[int] = []

    @once(key="k", lease=60)
    def work() -> None:
        runs.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work()

    record = backend.record("k")
    assert record is not None
    assert record.status == "in_progress"
    # The interrupted run may have acted: nothing runs again while its lease lasts.
    with pytest.raises(InProgress):
        work()
    assert runs == [1]


def test_system_exit_in_a_with_block_leaves_the_claim_to_its_lease(backend: Backend) -> None:
    def run() -> None:
        with check_lock("k", lease=60) as lock:
            assert lock.locked
            raise SystemExit(1)

    with pytest.raises(SystemExit):
        run()

    assert check_lock("k").duplicate

    record = backend.record("k")
    assert record is not None
    assert record.status == "in_progress"


def test_an_ordinary_exception_still_releases(backend: Backend) -> None:
    def run() -> None:
        with check_lock("k") as lock:
            assert lock.locked
            raise RuntimeError("provider said no")

    with pytest.raises(RuntimeError):
        run()

    assert backend.record("k") is None


def test_cancelled_async_run_leaves_the_claim_to_its_lease(backend: Backend) -> None:
    started = asyncio.Event()

    @once(key="slow", lease=60)
    async def slow() -> str:
        started.set()
        await asyncio.sleep(30)
        return "done"

    async def main() -> None:
        task = asyncio.create_task(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())

    record = backend.record("slow")
    assert record is not None
    assert record.status == "in_progress"


def test_wrapper_keeps_the_functions_name_and_doc(backend: Backend) -> None:
    @once(key="k")
    def send_receipt(order_id: int) -> None:
        """Send the receipt."""

    assert send_receipt.__name__ == "send_receipt"
    assert send_receipt.__doc__ == "Send the receipt."


def test_bad_decorator_options_are_refused_at_decoration() -> None:
    with pytest.raises(ValueError, match="on_error must be one of"):
        once(key="k", on_error="ignore")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="on_in_progress must be one of"):
        once(key="k", on_in_progress="wait")  # type: ignore[call-overload]


# -- async def ---------------------------------------------------------------------------


def test_async_first_call_runs_and_later_calls_return_the_stored_value(
    backend: Backend,
) -> None:
    sent: list[int] = []

    @once(key="welcome_email_{user_id}")
    async def send_welcome_email(user_id: int) -> dict[str, Any]:
        await asyncio.sleep(0)
        sent.append(user_id)
        return {"message_id": f"m-{user_id}"}

    assert asyncio.iscoroutinefunction(send_welcome_email)

    async def main() -> list[dict[str, Any]]:
        first = await send_welcome_email(7)
        return [first, await send_welcome_email(7), await send_welcome_email(user_id=7)]

    results = asyncio.run(main())

    assert sent == [7]
    assert results == [{"message_id": "m-7"}] * 3
    record = backend.record("welcome_email_7")
    assert record is not None
    assert record.result == {"message_id": "m-7"}


def test_async_default_key_and_none_result(backend: Backend) -> None:
    runs: list[int] = []

    @once
    async def ping(n: int) -> None:
        runs.append(n)

    async def main() -> list[None]:
        return [await ping(1), await ping(n=1), await ping(2)]

    assert asyncio.run(main()) == [None, None, None]
    assert runs == [1, 2]


def test_async_exception_releases_so_the_next_call_runs(backend: Backend) -> None:
    attempts: list[int] = []

    @once(key="sync_{n}")
    async def sync(n: int) -> str:
        attempts.append(n)
        if len(attempts) == 1:
            raise ConnectionError("reset")
        return "synced"

    with pytest.raises(ConnectionError):
        asyncio.run(sync(1))
    assert backend.record("sync_1") is None

    assert asyncio.run(sync(1)) == "synced"
    assert asyncio.run(sync(1)) == "synced"
    assert attempts == [1, 1]


def test_async_exception_with_on_error_fail_blocks(backend: Backend) -> None:
    attempts: list[int] = []

    @once(key="charge_{n}", on_error="fail")
    async def charge(n: int) -> str:
        attempts.append(n)
        raise ValueError("card declined")

    with pytest.raises(ValueError, match="card declined"):
        asyncio.run(charge(1))
    with pytest.raises(IntentBlocked):
        asyncio.run(charge(1))

    assert attempts == [1]


def test_async_in_progress_raises_or_skips(backend: Backend) -> None:
    runs: list[int] = []
    check_lock("report_1", lease=60)

    @once(key="report_{n}")
    async def build(n: int) -> int:
        runs.append(n)
        return n

    @once(key="report_{n}", on_in_progress="skip")
    async def build_or_skip(n: int) -> int:
        runs.append(n)
        return n

    with pytest.raises(InProgress) as exc:
        asyncio.run(build(1))
    assert exc.value.retry_after is not None
    assert asyncio.run(build_or_skip(1)) is None
    assert runs == []


def test_async_calls_racing_in_one_event_loop_run_the_body_once(backend: Backend) -> None:
    runs: list[int] = []

    async def main() -> list[str | None]:
        gate = asyncio.Event()

        @once(key="k", on_in_progress="skip")
        async def work() -> str:
            runs.append(1)
            await gate.wait()  # hold the claim until every other call has answered
            return "done"

        tasks = [asyncio.create_task(work()) for _ in range(5)]
        while sum(task.done() for task in tasks) < 4:
            await asyncio.sleep(0.01)
        gate.set()
        results = list(await asyncio.gather(*tasks))
        results.append(await work())
        return results

    results = asyncio.run(asyncio.wait_for(main(), timeout=60))

    assert runs == [1]
    assert results.count(None) == 4
    assert results.count("done") == 2  # the owner, then a replay after it finished
