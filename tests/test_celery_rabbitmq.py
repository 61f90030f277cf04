"""Guarantees 1-3 of ``OnceTask`` with RabbitMQ as the broker.

Same tasks and counting as ``tests/test_celery_guarantees.py`` (results in Redis,
records in the PostgreSQL test database). RabbitMQ has no visibility timeout: it hands a
message out again when the connection of the consumer that held it unacknowledged dies,
which the redelivery test causes by cutting a worker off the broker mid-run.
"""

from __future__ import annotations

import uuid

import pytest

from django_onceonly.stores import duplicates, get_store
from django_onceonly.stores.base import Record
from tests.celery.app import make_app
from tests.celery.fixtures import (
    RABBITMQ_BROKER,
    SESSION,
    CeleryEnv,
    Running,
    TcpProxy,
    Worker,
    counted_record,
    delete_queue,
    free_port,
    start_worker,
    wait_until,
)

pytestmark = [
    pytest.mark.services("rabbitmq", "redis", "postgres"),
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


def test_second_message_while_first_runs_waits_and_returns_first_result(
    rabbitmq_worker: Running,
) -> None:
    tasks, env = rabbitmq_worker.tasks, rabbitmq_worker.env
    tag = new_tag()

    first = tasks.send.delay(tag, sleep=1.5)
    wait_until(lambda: env.count(tag, "start"), "the first run to start")
    second = tasks.send.delay(tag)

    assert second.get(timeout=RESULT_TIMEOUT) == first.get(timeout=RESULT_TIMEOUT)
    third = tasks.send.delay(tag)
    assert third.get(timeout=RESULT_TIMEOUT) == first.get()
    executed = {a["task_id"] for a in env.effects_of(tag, "attempt")}
    assert executed == {first.id, second.id, third.id}
    assert env.count(tag, "sent") == 1
    stored = record(f"send-{tag}")
    assert stored is not None
    assert stored.status == "completed"


def test_self_retry_and_autoretry_resume_their_own_claim(rabbitmq_worker: Running) -> None:
    tasks, env = rabbitmq_worker.tasks, rabbitmq_worker.env
    manual, automatic = new_tag(), new_tag()

    first = tasks.flaky.delay(manual, failures=2)
    second = tasks.auto_flaky.delay(automatic, failures=2)

    assert first.get(timeout=RESULT_TIMEOUT) == {"tag": manual, "tries": 3}
    assert second.get(timeout=RESULT_TIMEOUT) == {"tag": automatic, "tries": 3}
    for tag in (manual, automatic):
        assert env.count(tag, "try") == 3
        assert env.count(tag, "sent") == 1
    stored = record(f"flaky-{manual}")
    assert stored is not None
    assert (stored.status, stored.duplicates_blocked) == ("completed", 0)


def test_message_redelivered_after_its_consumer_lost_the_broker_does_not_run_again(
    celery_env: CeleryEnv,
) -> None:
    # The first worker reaches RabbitMQ through a TCP proxy. It takes the message
    # (acks_late) and its pool process starts the 8-second body; then the proxy is cut.
    # RabbitMQ sees the connection die and hands the unacknowledged message to a second
    # worker while the first execution is still running (Celery keeps running tasks
    # through a lost broker connection).
    env = celery_env
    queue = f"onceonly-rabbitmq-redelivery-{SESSION}"
    tasks = make_app(RABBITMQ_BROKER, queue)
    tag = new_tag()
    proxy = TcpProxy(free_port(), ("127.0.0.1", 5672))
    proxy.open()
    first = start_worker(
        env,
        name="rabbitmq-first",
        broker=f"amqp://guest:guest@127.0.0.1:{proxy.port}//",
        queue=queue,
    )
    second: Worker | None = None
    try:
        result = tasks.send.delay(tag, sleep=8)
        wait_until(lambda: env.effects_of(tag, "start"), "the first run to start")
        proxy.close()
        second = start_worker(env, name="rabbitmq-second", broker=RABBITMQ_BROKER, queue=queue)

        value = result.get(timeout=RESULT_TIMEOUT)
    finally:
        proxy.close()
        if second is not None:
            second.stop()
        first.stop()
        delete_queue(tasks)

    attempts = [a for a in env.effects_of(tag, "attempt") if a["task_id"] == result.id]
    print(f"rabbitmq redelivery: {len(attempts)} executions of one message")
    assert any(a["redelivered"] for a in attempts), "RabbitMQ did not redeliver the message"
    assert env.count(tag, "start") == 1
    assert env.count(tag, "sent") == 1
    assert value["run"] == env.effects_of(tag, "sent")[0]["run"]
    stored = counted_record(f"send-{tag}", 1)  # blocked in the worker
    assert stored is not None
    assert stored.status == "completed"
    assert stored.duplicates_blocked >= 1
