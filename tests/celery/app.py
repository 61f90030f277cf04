"""The tasks the tests send to a real worker, and where they leave their side effects.

:func:`make_app` builds a Celery app for one broker and one queue with every test task
registered under a fixed name, so the worker (``tests/celery/worker.py``) and the test
process (``tests/celery/fixtures.py``) each build their own app from the same code.

Side effects are JSON lines appended to ``$ONCEONLY_TEST_EFFECTS_DIR/<tag>.log``; the
tests count them there, never through a task's return value. Every execution (claimed or
not) also leaves an ``attempt`` line, written by a ``task_prerun`` receiver.

A message may carry the header ``onceonly_test_settings`` (a dict of settings): the
worker applies it with ``override_settings`` around that execution, as if the worker had
been started with those settings. The tests use it for ``ONCEONLY_AFTER_LEASE="hold"``
and to point one message's store at a database that is down.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery, signals
from django.test.utils import override_settings
from kombu import Queue

from django_onceonly.celery import OnceTask

RESULT_BACKEND = os.environ.get("ONCEONLY_TEST_CELERY_RESULTS", "redis://127.0.0.1:6379/9")
TEST_SETTINGS_HEADER = "onceonly_test_settings"


def effects_dir() -> Path:
    return Path(os.environ["ONCEONLY_TEST_EFFECTS_DIR"])


def effect(tag: str, what: str, **fields: Any) -> None:
    """Append one side effect; a line this short is written in one ``write`` (O_APPEND)."""
    line = json.dumps({"what": what, "pid": os.getpid(), "at": time.time(), **fields})
    with open(effects_dir() / f"{tag}.log", "a", encoding="utf-8") as file:
        file.write(line + "\n")


def read_effects(tag: str, directory: Path | None = None) -> list[dict[str, Any]]:
    path = (directory or effects_dir()) / f"{tag}.log"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


_overrides: dict[str, override_settings] = {}


@signals.task_prerun.connect
def _before_each_execution(
    sender: Any = None,
    task_id: str | None = None,
    task: Any = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    request = task.request
    values = (request.headers or {}).get(TEST_SETTINGS_HEADER)
    if values and task_id:
        override = override_settings(**values)
        override.enable()
        _overrides[task_id] = override
    tag = (kwargs or {}).get("tag") or (args[0] if args else None)
    if isinstance(tag, str):
        delivery = request.delivery_info or {}
        effect(
            tag,
            "attempt",
            task_id=task_id,
            retries=request.retries,
            redelivered=bool(delivery.get("redelivered")),
        )


@signals.task_postrun.connect
def _after_each_execution(task_id: str | None = None, **_: Any) -> None:
    override = _overrides.pop(task_id or "", None)
    if override is not None:
        override.disable()


class Tasks:
    """The test tasks of one app; attributes are the registered tasks."""

    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue

    def __getattr__(self, name: str) -> Any:
        try:
            return self.app.tasks[f"onceonly_tests.{name}"]
        except KeyError:
            raise AttributeError(name) from None


def make_app(broker: str, queue: str, *, visibility_timeout: float | None = None) -> Tasks:
    app = Celery("onceonly_tests", broker=broker, backend=RESULT_BACKEND, set_as_current=False)
    transport_options: dict[str, Any] = {}
    if broker.startswith("redis") and visibility_timeout:
        transport_options = {
            "visibility_timeout": visibility_timeout,
            # Look for messages to restore every second, not every 100 seconds.
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    app.conf.update(
        # Not auto_delete: a message requeued when its only consumer died must survive.
        # RabbitMQ drops the queue itself ten minutes after its last consumer left, should
        # the fixtures not get to delete it.
        task_queues=[
            Queue(
                queue,
                routing_key=queue,
                durable=False,
                queue_arguments={"x-expires": 600_000},
            )
        ],
        task_default_queue=queue,
        task_default_routing_key=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
    )
    register_tasks(app)
    return Tasks(app, queue)


def _first_start(tag: str) -> bool:
    return not any(line["what"] == "start" for line in read_effects(tag))


def register_tasks(app: Celery) -> None:
    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.send",
        acks_late=True,
        once_key="send-{tag}",
        once_lease=3,
        default_retry_delay=1,
        max_retries=30,
    )
    def send(self: OnceTask, tag: str, sleep: float = 0.0, value: Any = None) -> dict[str, Any]:
        effect(tag, "start", key=self.once.key)
        time.sleep(sleep)
        run = uuid.uuid4().hex
        effect(tag, "sent", run=run, key=self.once.key)
        return {"tag": tag, "run": run, "value": value}

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.hashed",
        once_lease=3,
        acks_late=True,
    )
    def hashed(
        self: OnceTask, tag: str, amount: Any, when: Any, ident: Any = None, note: str = "n"
    ) -> str:
        effect(tag, "sent", key=self.once.key)
        return self.once.key

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.flaky",
        once_lease=3,
        acks_late=True,
        once_key="flaky-{tag}",
        max_retries=5,
    )
    def flaky(self: OnceTask, tag: str, failures: int) -> dict[str, Any]:
        effect(tag, "try", retries=self.request.retries, token=self.once.token)
        if self.request.retries < failures:
            raise self.retry(countdown=0.5)
        effect(tag, "sent")
        return {"tag": tag, "tries": self.request.retries + 1}

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.auto_flaky",
        once_lease=3,
        acks_late=True,
        once_key="auto-{tag}",
        autoretry_for=(ConnectionError,),
        max_retries=5,
        default_retry_delay=1,
    )
    def auto_flaky(self: OnceTask, tag: str, failures: int) -> dict[str, Any]:
        effect(tag, "try", retries=self.request.retries, token=self.once.token)
        if self.request.retries < failures:
            raise ConnectionError("provider unreachable")
        effect(tag, "sent")
        return {"tag": tag, "tries": self.request.retries + 1}

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.exhausted",
        once_lease=3,
        acks_late=True,
        once_key="exhausted-{tag}",
        max_retries=1,
    )
    def exhausted(self: OnceTask, tag: str, succeed: bool = False) -> str:
        effect(tag, "try", retries=self.request.retries)
        if not succeed:
            raise self.retry(countdown=0.3, exc=ConnectionError("provider still unreachable"))
        effect(tag, "sent")
        return "sent"

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.crashy",
        acks_late=True,
        reject_on_worker_lost=True,
        once_key="crashy-{tag}",
        once_lease=3,
    )
    def crashy(self: OnceTask, tag: str, hang: float = 60.0) -> str:
        # The first run hangs until the test SIGKILLs it; a later run completes.
        first = _first_start(tag)
        effect(tag, "start")
        if first:
            time.sleep(hang)
        effect(tag, "sent")
        return "sent"

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.limited",
        acks_late=True,
        once_key="limited-{tag}",
        time_limit=2,
    )
    def limited(self: OnceTask, tag: str, hang: float = 60.0) -> str:
        # The first run hangs until the hard time limit kills it.
        first = _first_start(tag)
        effect(tag, "start")
        if first:
            time.sleep(hang)
        effect(tag, "sent")
        return "sent"

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.unstorable",
        once_key="bad-{tag}",
    )
    def unstorable(self: OnceTask, tag: str, kind: str) -> Any:
        effect(tag, "sent")
        if kind == "set":
            return {"not", "json"}
        return "x" * (1024 * 1024 + 1)

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.ambiguous",
        acks_late=True,
        once_key="ambiguous-{tag}",
        once_ambiguous=(TimeoutError,),
        autoretry_for=(TimeoutError, ConnectionError),
        max_retries=3,
        default_retry_delay=0,
    )
    def ambiguous(self: OnceTask, tag: str) -> None:
        effect(tag, "try")
        raise TimeoutError("the provider did not answer within 10 s")

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.double",
        once_lease=3,
        once_key="double-{tag}-{value}",
    )
    def double(self: OnceTask, value: int, tag: str, sleep: float = 0.0) -> int:
        effect(tag, "double", value=value)
        time.sleep(sleep)
        return value * 2

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.total",
        once_lease=3,
        once_key="total-{tag}",
    )
    def total(self: OnceTask, values: list[int], tag: str) -> int:
        effect(tag, "total", values=values)
        return sum(values)

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.enqueued",
        acks_late=True,
        once_key="enqueued-{tag}",
        once_enqueue=True,
        once_lease=5,
    )
    def enqueued(self: OnceTask, tag: str, sleep: float = 0.0) -> dict[str, Any]:
        effect(tag, "start")
        time.sleep(sleep)
        run = uuid.uuid4().hex
        effect(tag, "sent", run=run)
        return {"run": run}

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.strict",
        once_lease=3,
        once_key="strict-{tag}",
        once_on_duplicate="raise",
        once_on_in_progress="raise",
    )
    def strict(self: OnceTask, tag: str, sleep: float = 0.0) -> str:
        effect(tag, "sent")
        time.sleep(sleep)
        return "sent"

    @app.task(
        base=OnceTask,
        shared=False,
        bind=True,
        name="onceonly_tests.lenient",
        once_lease=3,
        once_key="lenient-{tag}",
        once_on_in_progress="skip",
        once_on_error="fail",
    )
    def lenient(self: OnceTask, tag: str, sleep: float = 0.0, fail: bool = False) -> str:
        effect(tag, "sent")
        time.sleep(sleep)
        if fail:
            raise ValueError("the provider refused the address")
        return "sent"
