"""``OnceTask`` options with a real worker: once_enqueue, once_ambiguous, the duplicate and
in-progress policies, on_error, and the heartbeat that keeps a long run's lease alive.

Same worker and counting as ``tests/test_celery_guarantees.py``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from celery import group
from django.utils import timezone
from kombu.exceptions import OperationalError

from django_onceonly import InProgress, IntentBlocked, signals
from django_onceonly.celery import DuplicateTask
from django_onceonly.stores import duplicates, get_store
from django_onceonly.stores.base import Record
from tests.celery.app import make_app
from tests.celery.fixtures import Running, free_port, wait_until

pytestmark = [
    pytest.mark.services("redis", "postgres"),
    pytest.mark.django_db(transaction=True, databases=["default", "postgres"]),
    pytest.mark.usefixtures("pg_records"),
    pytest.mark.slow,
]

RESULT_TIMEOUT = 45


def new_tag() -> str:
    return uuid.uuid4().hex[:16]


def record(key: str) -> Record | None:
    duplicates.flush()  # the duplicate counts this process holds
    return get_store().get("", key)


# -- once_enqueue --------------------------------------------------------------------------


def test_enqueue_does_not_publish_a_queued_or_completed_intent_again(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    first = tasks.enqueued.delay(tag, sleep=1.0)
    claimed = record(f"enqueued-{tag}")
    assert claimed is not None
    assert (claimed.status, claimed.task_id) == ("in_progress", first.id)

    while_queued = tasks.enqueued.delay(tag)
    assert while_queued.id == first.id
    value = first.get(timeout=RESULT_TIMEOUT)
    after = tasks.enqueued.delay(tag)

    assert after.id == first.id
    assert after.get(timeout=RESULT_TIMEOUT) == value
    assert while_queued.get(timeout=RESULT_TIMEOUT) == value
    # One message was ever published: one execution, one side effect.
    assert env.count(tag, "attempt") == 1
    assert env.count(tag, "sent") == 1
    stored = record(f"enqueued-{tag}")
    assert stored is not None
    assert stored.status == "completed"
    assert stored.duplicates_blocked == 2


def test_enqueue_claim_lease_covers_the_countdown(redis_worker: Running) -> None:
    tasks = redis_worker.tasks
    tag = new_tag()

    result = tasks.enqueued.apply_async((tag,), countdown=2)

    claimed = record(f"enqueued-{tag}")
    assert claimed is not None
    assert claimed.lease_expires_at is not None
    assert claimed.created_at is not None
    # once_lease (5 s) plus the countdown.
    assert (claimed.lease_expires_at - claimed.created_at).total_seconds() == pytest.approx(7)
    assert result.get(timeout=RESULT_TIMEOUT)["run"]


def test_enqueue_publish_failure_frees_the_claim(redis_worker: Running) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()
    # Nothing listens on this port: publishing fails after the claim was made.
    unreachable = make_app(f"redis://127.0.0.1:{free_port()}/9", tasks.queue)

    events: list[str] = []

    def log(signal: str) -> Any:
        def receiver(sender: Any, *, lock: Any, **kwargs: Any) -> None:
            if lock.key == f"enqueued-{tag}":
                events.append(signal)

        return receiver

    acquired, released = log("acquired"), log("released")
    signals.lock_acquired.connect(acquired)
    signals.lock_released.connect(released)
    try:
        with pytest.raises(OperationalError):
            unreachable.enqueued.apply_async((tag,), retry=False)
    finally:
        signals.lock_acquired.disconnect(acquired)
        signals.lock_released.disconnect(released)

    assert events == ["acquired", "released"]
    assert record(f"enqueued-{tag}") is None
    assert tasks.enqueued.delay(tag).get(timeout=RESULT_TIMEOUT)["run"]
    assert env.count(tag, "sent") == 1


def test_enqueue_inside_a_group_publishes_every_member_and_the_group_completes(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    results = group(tasks.enqueued.s(tag), tasks.enqueued.s(tag)).apply_async()

    first, second = results.get(timeout=RESULT_TIMEOUT)
    assert first == second
    assert env.count(tag, "attempt") >= 2
    assert env.count(tag, "sent") == 1


# -- once_ambiguous --------------------------------------------------------------------------


def test_ambiguous_error_turns_the_record_unknown_and_is_not_retried(
    redis_worker: Running,
) -> None:
    # autoretry_for lists TimeoutError too: once_ambiguous wins, the provider may have
    # accepted the first call.
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    result = tasks.ambiguous.delay(tag)

    wait_until(lambda: result.state == "FAILURE", "the task to fail")
    assert isinstance(result.result, TimeoutError)
    assert env.count(tag, "try") == 1
    stored = record(f"ambiguous-{tag}")
    assert stored is not None
    assert stored.status == "unknown"
    assert "TimeoutError" in stored.error
    assert stored.expires_at is None  # blocks until a person releases it

    again = tasks.ambiguous.delay(tag)
    wait_until(lambda: again.state == "FAILURE", "the duplicate to be refused")
    assert isinstance(again.result, IntentBlocked)
    assert env.count(tag, "try") == 1


# -- duplicate and in-progress policies --------------------------------------------------


def test_on_duplicate_raise_and_on_in_progress_raise(redis_worker: Running) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    done, running = new_tag(), new_tag()

    assert tasks.strict.delay(done).get(timeout=RESULT_TIMEOUT) == "sent"
    duplicate = tasks.strict.delay(done)
    wait_until(lambda: duplicate.state == "FAILURE", "the duplicate to fail")
    assert isinstance(duplicate.result, DuplicateTask)
    assert duplicate.result.key == f"strict-{done}"
    assert env.count(done, "sent") == 1

    slow = tasks.strict.delay(running, sleep=2)
    wait_until(lambda: env.count(running, "sent"), "the slow run to start")
    busy = tasks.strict.delay(running)
    wait_until(lambda: busy.state == "FAILURE", "the in-progress duplicate to fail")
    assert isinstance(busy.result, InProgress)
    assert busy.result.retry_after is not None
    assert slow.get(timeout=RESULT_TIMEOUT) == "sent"
    assert env.count(running, "sent") == 1


def test_on_in_progress_skip_returns_none_without_running(redis_worker: Running) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    slow = tasks.lenient.delay(tag, sleep=2)
    wait_until(lambda: env.count(tag, "sent"), "the slow run to start")

    assert tasks.lenient.delay(tag).get(timeout=RESULT_TIMEOUT) is None
    assert slow.get(timeout=RESULT_TIMEOUT) == "sent"
    assert env.count(tag, "sent") == 1


def test_on_error_fail_stores_the_failure_and_blocks_later_messages(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    failed = tasks.lenient.delay(tag, fail=True)
    wait_until(lambda: failed.state == "FAILURE", "the task to fail")
    assert isinstance(failed.result, ValueError)
    stored = record(f"lenient-{tag}")
    assert stored is not None
    assert stored.status == "failed"
    assert "refused the address" in stored.error

    again = tasks.lenient.delay(tag)
    wait_until(lambda: again.state == "FAILURE", "the later message to be refused")
    assert isinstance(again.result, IntentBlocked)
    assert again.result.record_status == "failed"
    assert env.count(tag, "sent") == 1


# -- lease and heartbeat -----------------------------------------------------------------


def test_heartbeat_keeps_a_run_longer_than_its_lease_claimed(redis_worker: Running) -> None:
    # `send` has once_lease=3 and no time limit: a heartbeat extends the lease while the
    # body runs, so a message arriving after the first lease would have ended is still a
    # duplicate of a live run, not a reclaim.
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    first = tasks.send.delay(tag, sleep=6)
    wait_until(lambda: env.count(tag, "start"), "the run to start")
    claimed = record(f"send-{tag}")
    assert claimed is not None
    assert claimed.lease_expires_at is not None
    first_lease_end = claimed.lease_expires_at
    wait_until(
        lambda: timezone.now() > first_lease_end + dt.timedelta(seconds=0.5),
        "the first lease to be over",
    )
    alive = record(f"send-{tag}")
    assert alive is not None
    assert alive.status == "in_progress"
    assert alive.owner_token == claimed.owner_token
    assert alive.lease_expires_at is not None
    assert alive.lease_expires_at > timezone.now()  # extended by the heartbeat

    late = tasks.send.delay(tag)

    assert late.get(timeout=RESULT_TIMEOUT) == first.get(timeout=RESULT_TIMEOUT)
    assert env.count(tag, "start") == 1
    assert env.count(tag, "sent") == 1
