"""Durable enqueue without a worker: what ``enqueue`` writes and publishes, and the relay.

Messages go to a real Redis broker (the shared server's database 9, a queue unique to
each test that no worker consumes), and the tests read them back from the queue, so a
"published" here is a message the broker holds. The guarantees with a real worker are
in ``tests/test_outbox_celery.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery import _state as celery_state
from django.core.checks import Error
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import EncodeError

from django_onceonly import InvalidKey
from django_onceonly.celery import OnceTask
from django_onceonly.models import OutboxMessage
from django_onceonly.outbox import (
    RelayReport,
    check_outbox_alert,
    drain,
    enqueue,
    flush,
    outbox_health,
    purge_published,
    relay,
    relay_forever,
)
from django_onceonly.tasks import _relay_outbox, relay_outbox
from tests.celery.fixtures import REDIS_BROKER, free_port, wait_until
from tests.conftest import Backend, backend_params

ROOT = Path(__file__).resolve().parents[1]

on_each_database = pytest.mark.parametrize(
    "backend", backend_params("sqlite", "postgres", "mariadb"), indirect=True
)
on_locking_databases = pytest.mark.parametrize(
    "backend", backend_params("postgres", "mariadb"), indirect=True
)
needs_broker = pytest.mark.services("redis")
SQLITE = Backend("sqlite", "", "default")


@dataclass
class Broker:
    """A Celery app publishing to a queue of its own, and that queue read back."""

    app: Celery
    queue: str
    client: redis.Redis

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.client.lrange(self.queue, 0, -1)]

    def task_ids(self) -> list[str]:
        return [message["headers"]["id"] for message in self.messages()]

    def args_of(self, task_id: str) -> Any:
        import base64

        for message in self.messages():
            if message["headers"]["id"] == task_id:
                return json.loads(base64.b64decode(message["body"]))[:2]
        raise AssertionError(f"no message {task_id}")


def make_app(broker_url: str, queue: str) -> Celery:
    app = Celery("outbox_tests", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_default_routing_key=queue,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=False,
        # A broker that is down fails the publish quickly.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
        broker_transport_options={"socket_connect_timeout": 1},
    )

    @app.task(name="outbox_tests.plain", shared=False)
    def plain(user_id: int, note: str = "") -> None:
        return None

    @app.task(name="outbox_tests.rich", shared=False)
    def rich(amount: Decimal, when: dt.datetime, ident: uuid.UUID) -> None:
        return None

    @app.task(name="outbox_tests.queued", shared=False)
    def queued(queue: str) -> None:
        return None

    @app.task(name="outbox_tests.once", base=OnceTask, bind=True, shared=False, once_key="o-{key}")
    def once(self: OnceTask, key: str) -> None:
        return None

    return app


@pytest.fixture
def broker() -> Iterator[Broker]:
    queue = f"onceonly-outbox-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_BROKER)
    yield Broker(make_app(REDIS_BROKER, queue), queue, client)
    client.delete(queue, f"_kombu.binding.{queue}")


@pytest.fixture
def down_broker() -> Broker:
    """An app whose broker is a loopback port where nothing listens."""
    queue = f"onceonly-outbox-{uuid.uuid4().hex[:12]}"
    url = f"redis://127.0.0.1:{free_port()}/0"
    return Broker(make_app(url, queue), queue, redis.Redis.from_url(REDIS_BROKER))


class Abort(Exception):
    """Raised inside a transaction to roll it back."""


@pytest.fixture(autouse=True)
def _write_marks_before_the_tables_are_flushed() -> Iterator[None]:
    yield
    flush()


def rows(backend: Backend) -> Any:
    return OutboxMessage.objects.using(backend.alias)


def task(broker: Broker, name: str = "plain") -> Any:
    return broker.app.tasks[f"outbox_tests.{name}"]


# -- enqueue and the fast path -----------------------------------------------------------


@needs_broker
@on_each_database
def test_enqueue_publishes_only_after_the_commit_and_marks_the_row(
    backend: Backend, broker: Broker
) -> None:
    with transaction.atomic(using=backend.alias):
        result = enqueue(task(broker), 7, note="hi")
        # Written in the transaction, and nothing on the broker yet.
        assert rows(backend).pending().count() == 1
        assert broker.task_ids() == []

    assert broker.task_ids() == [result.id]
    assert broker.args_of(result.id) == [[7], {"note": "hi"}]
    row = rows(backend).get()
    assert row.task_id == result.id
    assert row.attempts == 0
    # The mark follows within MARK_INTERVAL, written by the marks thread.
    wait_until(lambda: rows(backend).get().published_at, "the row to be marked", 10)


@needs_broker
@on_each_database
def test_the_caller_pays_one_insert_and_no_second_commit(backend: Backend, broker: Broker) -> None:
    with CaptureQueriesContext(connections[backend.alias]) as queries:
        with transaction.atomic(using=backend.alias):
            enqueue(task(broker), 7)
        assert len(broker.task_ids()) == 1  # published before the block returned

    statements = [query["sql"].split()[0].upper() for query in queries.captured_queries]
    assert statements.count("INSERT") == 1
    assert "UPDATE" not in statements
    assert flush() == 1  # the mark, as the marks thread writes it
    assert rows(backend).get().published_at is not None


@needs_broker
@pytest.mark.django_db(transaction=True)
def test_a_celery_pool_process_writes_its_marks_as_it_ends(broker: Broker) -> None:
    # Pool processes end with os._exit (no atexit): the shutdown signal writes the marks.
    from celery import signals

    with transaction.atomic():
        enqueue(task(broker), 1)
    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)

    assert OutboxMessage.objects.get().published_at is not None


@needs_broker
@on_each_database
def test_a_rolled_back_transaction_publishes_nothing_and_leaves_no_row(
    backend: Backend, broker: Broker
) -> None:
    def create_then_fail() -> None:
        with transaction.atomic(using=backend.alias):
            enqueue(task(broker), 7)
            raise Abort

    with pytest.raises(Abort):
        create_then_fail()

    assert not rows(backend).exists()
    assert drain(app=broker.app, min_age=0, using=backend.alias).published == 0
    assert broker.task_ids() == []


@needs_broker
@on_each_database
def test_outside_a_transaction_enqueue_publishes_at_once(backend: Backend, broker: Broker) -> None:
    result = task(broker, "once").enqueue("k1")

    assert broker.task_ids() == [result.id]
    flush()
    assert rows(backend).get().published_at is not None
    # OnceTask's publish put the intent's key in the headers, as apply_async does.
    assert broker.messages()[0]["headers"]["onceonly_key"] == "o-k1"


@needs_broker
@on_each_database
def test_a_rolled_back_savepoint_drops_its_message_and_keeps_the_others(
    backend: Backend, broker: Broker
) -> None:
    with transaction.atomic(using=backend.alias):
        kept = enqueue(task(broker), 1)
        try:
            with transaction.atomic(using=backend.alias):
                enqueue(task(broker), 2)
                raise Abort
        except Abort:
            pass

    assert broker.task_ids() == [kept.id]
    assert list(rows(backend).values_list("task_id", flat=True)) == [kept.id]


@needs_broker
@pytest.mark.django_db(transaction=True)
def test_rich_arguments_reach_the_broker_as_the_caller_passed_them(broker: Broker) -> None:
    when = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    ident = uuid.uuid4()
    with transaction.atomic():
        first = enqueue(task(broker, "rich"), Decimal("10.50"), when, ident)
    # The same row as a crash would have left it: published by the relay instead.
    row = OutboxMessage.objects.get(task_id=first.id)
    relayed_row = OutboxMessage.objects.create(
        task_name="outbox_tests.rich",
        task_id="relayed",
        payload=row.payload,
        created_at=timezone.now() - dt.timedelta(seconds=10),
    )

    assert drain(app=broker.app).published == 1
    assert OutboxMessage.objects.get(pk=relayed_row.pk).published_at is not None
    # The relay's message carries the same arguments as the fast path's.
    assert broker.args_of("relayed") == broker.args_of(first.id)


@needs_broker
@pytest.mark.django_db(transaction=True)
def test_the_message_carries_the_arguments_as_they_were_at_the_call(broker: Broker) -> None:
    items = [1]
    with transaction.atomic():
        result = enqueue(task(broker), items)
        items.append(2)  # the caller's own object changes before the commit

    assert broker.args_of(result.id) == [[[1]], {}]


@pytest.mark.django_db(transaction=True)
def test_unserialisable_arguments_are_refused_and_nothing_is_written(broker: Broker) -> None:
    with transaction.atomic():
        with pytest.raises(EncodeError, match=r"cannot enqueue outbox_tests.plain: .*JSON"):
            enqueue(task(broker), {"a", "set"})
        with pytest.raises(EncodeError, match="JSON"):
            enqueue(task(broker), 1, note=object())
    assert not OutboxMessage.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_bad_calls_are_refused_in_the_transaction_and_nothing_is_written(
    broker: Broker,
) -> None:
    with pytest.raises(TypeError):
        enqueue(task(broker), 1, 2, 3)  # plain takes user_id and note
    with pytest.raises(TypeError):
        enqueue(task(broker), 1, colour="red")
    with pytest.raises(InvalidKey):
        task(broker, "once").enqueue("bad\x00key")
    with pytest.raises(TypeError, match="countdown or eta"):
        enqueue(task(broker), 1, countdown=5, eta=timezone.now())
    with pytest.raises(ValueError, match="countdown"):
        enqueue(task(broker), 1, countdown=float("nan"))
    with pytest.raises(TypeError, match="parameter named 'queue'"):
        enqueue(task(broker, "queued"), queue="emails")
    with pytest.raises(TypeError, match="registered Celery task"):
        enqueue(print, 1)  # type: ignore[arg-type]
    assert not OutboxMessage.objects.exists()


@needs_broker
@pytest.mark.django_db(transaction=True)
def test_countdown_eta_and_queue_are_kept_for_the_relay(broker: Broker) -> None:
    before = timezone.now()
    other_queue = broker.queue + "-other"
    try:
        with transaction.atomic():
            counted = enqueue(task(broker), 1, countdown=60)
            routed = enqueue(task(broker), 2, queue=other_queue)
        counted_row = OutboxMessage.objects.get(task_id=counted.id)
        assert counted_row.eta is not None
        assert before + dt.timedelta(seconds=59) < counted_row.eta
        assert OutboxMessage.objects.get(task_id=routed.id).queue == other_queue
        [message] = [m for m in broker.messages() if m["headers"]["id"] == counted.id]
        assert message["headers"]["eta"] == counted_row.eta.isoformat()
        assert broker.client.llen(other_queue) == 1
    finally:
        broker.client.delete(other_queue, f"_kombu.binding.{other_queue}")


# -- broker down: the row waits for the relay --------------------------------------------


@needs_broker
@on_each_database
def test_broker_down_at_commit_keeps_the_row_and_the_relay_publishes_it_later(
    backend: Backend, down_broker: Broker, broker: Broker
) -> None:
    with transaction.atomic(using=backend.alias):
        result = enqueue(task(down_broker), 5)
    # The commit stood; the publish failed and was recorded on the row.
    row = rows(backend).get()
    assert row.published_at is None
    assert row.attempts == 1
    assert row.last_error

    # The relay against the broker that is still down: nothing, and it says so.
    report = relay(app=down_broker.app, min_age=0, using=backend.alias)
    assert (report.published, report.failed, report.stalled) == (0, 1, False)
    assert rows(backend).get().attempts == 2

    # The broker is back (here: a relay whose app reaches one).
    report = relay(app=broker.app, min_age=0, using=backend.alias)
    assert (report.published, report.failed) == (1, 0)
    assert broker.task_ids() == [result.id]
    assert rows(backend).get().published_at is not None


@needs_broker
@pytest.mark.django_db(transaction=True)
def test_a_pass_stops_after_two_failures_in_a_row(down_broker: Broker) -> None:
    with transaction.atomic():
        for user_id in range(5):
            enqueue(task(down_broker), user_id)
    report = relay(app=down_broker.app, min_age=0)
    assert (report.published, report.failed, report.stalled) == (0, 2, True)
    assert "Error" in report.error


class RecordedStop(threading.Event):
    """A stop event that records each wait of the relay loop instead of sleeping.

    It stops the loop after ``passes`` waits, so the loop's backoff can be read
    exactly, without timing anything.
    """

    def __init__(self, passes: int) -> None:
        super().__init__()
        self.passes = passes
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        if len(self.waits) >= self.passes:
            self.set()
        return self.is_set()


@needs_broker
@pytest.mark.django_db(transaction=True)
def test_the_relay_backs_off_while_the_broker_is_down_and_not_once_it_is_up(
    down_broker: Broker, broker: Broker
) -> None:
    pending_rows(SQLITE, 3)
    down = RecordedStop(passes=6)
    relay_forever(down, app=down_broker.app, interval=0.1, max_backoff=0.5, min_age=0)
    # Doubling from the interval, capped at max_backoff.
    assert down.waits == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert OutboxMessage.objects.pending().count() == 3

    up = RecordedStop(passes=3)
    reports: list[RelayReport] = []
    relay_forever(
        up, app=broker.app, interval=0.1, max_backoff=0.5, min_age=0, on_report=reports.append
    )
    assert up.waits == [0.1, 0.1, 0.1]
    assert [report.published for report in reports] == [3, 0, 0]
    assert not OutboxMessage.objects.pending().exists()


# -- the relay ---------------------------------------------------------------------------


def pending_rows(backend: Backend, count: int, age: float = 10.0) -> set[str]:
    """``count`` committed, unpublished rows (as a crash after the commit leaves them)."""
    created = timezone.now() - dt.timedelta(seconds=age)
    built = [
        OutboxMessage(
            task_name="outbox_tests.plain",
            task_id=uuid.uuid4().hex,
            payload=json.dumps({"args": [i], "kwargs": {}}),
            created_at=created,
        )
        for i in range(count)
    ]
    rows(backend).bulk_create(built, batch_size=500)
    return {row.task_id for row in built}


@needs_broker
@on_each_database
def test_relay_publishes_due_rows_oldest_first_and_leaves_young_ones(
    backend: Backend, broker: Broker
) -> None:
    due = pending_rows(backend, 5)
    young = pending_rows(backend, 2, age=0)

    report = relay(app=broker.app, batch_size=3, using=backend.alias)
    assert report.published == 3
    assert drain(app=broker.app, batch_size=3, using=backend.alias).published == 2

    assert set(broker.task_ids()) == due
    assert set(rows(backend).pending().values_list("task_id", flat=True)) == young


@needs_broker
@on_locking_databases
def test_concurrent_relays_publish_each_row_once(backend: Backend, broker: Broker) -> None:
    trials, relays = 400, 4
    expected = pending_rows(backend, trials)
    barrier = threading.Barrier(relays)
    reports: list[int] = []

    def run() -> None:
        try:
            barrier.wait()
            reports.append(drain(app=broker.app, batch_size=10, using=backend.alias).published)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(relays)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    published = Counter(broker.task_ids())
    print(f"{relays} concurrent relays over {trials} rows: published {sorted(reports)}")
    assert set(published) == expected
    assert max(published.values()) == 1
    assert sum(reports) == trials
    assert len([count for count in reports if count]) > 1, "one relay did all the work"
    assert not rows(backend).pending().exists()


# -- purge, monitoring, the command and the beat task ------------------------------------


@needs_broker
@on_each_database
def test_purge_deletes_published_rows_only(backend: Backend, broker: Broker) -> None:
    with transaction.atomic(using=backend.alias):
        for user_id in range(3):
            enqueue(task(broker), user_id)
    flush()
    waiting = pending_rows(backend, 2)

    assert purge_published(dry_run=True, using=backend.alias) == 3
    assert purge_published(batch_size=2, using=backend.alias) == 3
    assert set(rows(backend).values_list("task_id", flat=True)) == waiting


@on_each_database
def test_rows_older_than_the_alert_age_are_reported(backend: Backend, settings: Any) -> None:
    settings.ONCEONLY_OUTBOX_ALERT_AFTER = 60
    pending_rows(backend, 2, age=120)
    pending_rows(backend, 3, age=5)

    health = outbox_health()
    assert (health.pending, health.late) == (5, 2)
    assert health.oldest_late is not None
    assert rows(backend).older_than(60).count() == 2
    assert rows(backend).older_than(1).count() == 5

    out = StringIO()
    call_command("onceonly_stats", stdout=out)
    assert "Outbox: 5 pending; 2 older than 60 s (ONCEONLY_OUTBOX_ALERT_AFTER)" in out.getvalue()
    out = StringIO()
    call_command("onceonly_stats", "--json", stdout=out)
    assert json.loads(out.getvalue())["outbox"]["late"] == 2


@pytest.mark.parametrize("value", [0, -1, "300", float("inf"), True, None, 200 * 365 * 86400])
def test_a_bad_alert_age_is_reported_by_check_e011(value: Any) -> None:
    with override_settings(ONCEONLY_OUTBOX_ALERT_AFTER=value):
        found = check_outbox_alert(None)
    assert [error.id for error in found] == ["django_onceonly.E011"]
    assert isinstance(found[0], Error)


def test_the_default_alert_age_passes_the_check() -> None:
    assert check_outbox_alert(None) == []
    with override_settings(ONCEONLY_OUTBOX_ALERT_AFTER=30.5):
        assert check_outbox_alert(None) == []


@needs_broker
@pytest.mark.django_db(transaction=True)
def test_relay_command_once_and_the_beat_task_publish_what_is_due(
    broker: Broker, settings: Any
) -> None:
    first = pending_rows(SQLITE, 3)
    out = StringIO()
    previous = celery_state.get_current_app()
    broker.app.set_current()  # the command publishes through the current app
    try:
        call_command("onceonly_relay", "--once", stdout=out)
    finally:
        previous.set_current()
    assert out.getvalue().strip() == "Published 3 message(s)."
    assert set(broker.task_ids()) == first

    second = pending_rows(SQLITE, 2)
    assert _relay_outbox(app=broker.app) == {"published": 2, "failed": 0, "error": ""}
    assert relay_outbox.name == "django_onceonly.tasks.relay_outbox"
    assert set(broker.task_ids()) == first | second


@needs_broker
@pytest.mark.services("postgres")
@pytest.mark.django_db(transaction=True, databases=["default", "postgres"])
def test_relay_command_runs_until_sigterm_and_stops_cleanly(broker: Broker, tmp_path: Path) -> None:
    # A real `manage.py onceonly_relay` process (the outbox on the PostgreSQL test database).
    script = tmp_path / "relay.py"
    script.write_text(RELAY_SCRIPT)
    env = relay_env(broker, "postgres")
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        backend = Backend("postgres", "", "postgres")
        expected = pending_rows(backend, 4)
        wait_until(lambda: set(broker.task_ids()) == expected, "the relay to publish", 30)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "Relay started." in output
    assert "Published 4 message(s)." in output
    assert output.rstrip().endswith("Relay stopped.")
    assert not rows(backend).pending().exists()


RELAY_SCRIPT = """
import json, os, sys
import django
from django.conf import settings

settings.configure(
    USE_TZ=True,
    INSTALLED_APPS=["django_onceonly"],
    DATABASES={"default": json.loads(os.environ["OUTBOX_TEST_DATABASE"])},
    ONCEONLY_DATABASE="default",
    DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
)
django.setup()
from celery import Celery
from django.core.management import call_command

# No task is registered here: the relay publishes by name (send_task).
app = Celery("relay", broker=os.environ["OUTBOX_TEST_BROKER"])
queue = os.environ["OUTBOX_TEST_QUEUE"]
app.conf.update(task_default_queue=queue, task_default_routing_key=queue)
app.set_current()

call_command("onceonly_relay", "--interval", "0.2", "--min-age", "0")
"""


def relay_env(broker: Broker, alias: str) -> dict[str, str]:
    fields = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")
    database = {key: connections[alias].settings_dict.get(key) for key in fields}
    return {
        **os.environ,
        "OUTBOX_TEST_DATABASE": json.dumps(database),
        "OUTBOX_TEST_BROKER": REDIS_BROKER,
        "OUTBOX_TEST_QUEUE": broker.queue,
        "PYTHONUNBUFFERED": "1",
    }


# -- the admin ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_admin_lists_pending_rows_with_age_and_error_and_warns_when_late(
    admin_client: Client, settings: Any
) -> None:
    settings.ONCEONLY_OUTBOX_ALERT_AFTER = 60
    late = OutboxMessage.objects.create(
        task_name="shop.send_receipt",
        task_id="late-one",
        payload="{}",
        created_at=timezone.now() - dt.timedelta(minutes=10),
        attempts=3,
        last_error="OperationalError: Error 111 connecting to 127.0.0.1:6379",
    )
    OutboxMessage.objects.create(
        task_name="shop.done", task_id="done-one", payload="{}", published_at=timezone.now()
    )
    url = reverse("admin:django_onceonly_outboxmessage_changelist")

    html = admin_client.get(url).content.decode()
    assert "late-one" in html
    assert "done-one" not in html  # the list opens on the pending rows
    assert "10:0" in html  # age, minutes:seconds
    assert "Error 111 connecting" in html
    assert "1 older than 60 s" in html
    assert "done-one" in admin_client.get(url + "?state=published").content.decode()

    change = reverse("admin:django_onceonly_outboxmessage_change", args=[late.pk])
    assert admin_client.post(change, {"task_name": "x"}).status_code == 403
    assert admin_client.get(reverse("admin:django_onceonly_outboxmessage_add")).status_code == 403
