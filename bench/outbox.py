"""The cost of durable enqueue, and how fast the relay drains a backlog.

    .venv/bin/python bench/outbox.py [--databases postgres,mariadb,sqlite] [--n 1000]
                                     [--rounds 5] [--relay-rows 5000] [--chunk 5000] [--check]

Two figures per database, each against a floor measured in the same run on the same
connection and broker (a Redis queue of this script's own that no worker consumes):

- ``enqueue``: a transaction that inserts one row of the caller's own (the user of
  "create the user, send the welcome email") and enqueues a task, as a ratio to the same
  transaction with ``transaction.on_commit(lambda: task.delay(...))``, the pattern the
  outbox replaces. The outbox adds one insert inside the transaction and, after the
  commit, the fast path's short transaction that marks the row published. Target: at
  most 1.5x. Batches of each kind alternate; each figure is the median over the rounds.
- ``relay``: N pending rows (as a broker outage leaves them) drained by one relay,
  in messages per second, as a ratio to publishing N messages with ``task.delay`` in a
  loop; in alternating chunks (``--chunk``, 5,000 rows). A 100,000-row backlog by hand:
  ``--relay-rows 100000 --chunk 100000``.

The scratch databases are created with the real migrations and dropped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import django
from django.conf import settings

BROKER = os.environ.get("ONCEONLY_BENCH_BROKER", "redis://127.0.0.1:6379/10")
TARGET = 1.5
_SQLITE_DIR = tempfile.mkdtemp(prefix="onceonly-bench-outbox-")


def database_settings(name: str, db_name: str) -> dict[str, Any]:
    if name == "postgres":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("ONCEONLY_BENCH_PG_NAME", "postgres"),
            "USER": os.environ.get("ONCEONLY_BENCH_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("ONCEONLY_BENCH_PG_PASSWORD", ""),
            "HOST": os.environ.get("ONCEONLY_BENCH_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("ONCEONLY_BENCH_PG_PORT", "5432"),
            "TEST": {"NAME": db_name},
        }
    if name == "mariadb":
        return {
            "ENGINE": "django.db.backends.mysql",
            "NAME": os.environ.get("ONCEONLY_BENCH_MARIADB_NAME", "mysql"),
            "USER": os.environ.get("ONCEONLY_BENCH_MARIADB_USER", "root"),
            "PASSWORD": os.environ.get("ONCEONLY_BENCH_MARIADB_PASSWORD", ""),
            "HOST": os.environ.get("ONCEONLY_BENCH_MARIADB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("ONCEONLY_BENCH_MARIADB_PORT", "3306"),
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {"NAME": db_name, "CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
        }
    if name == "sqlite":
        # A file, not memory: commits cost what they cost in a real deployment.
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(_SQLITE_DIR, "sqlite.sqlite3"),
            "TEST": {"NAME": os.path.join(_SQLITE_DIR, f"{db_name}.sqlite3")},
        }
    raise ValueError(f"unknown database {name!r}")


def configure(names: list[str], db_name: str) -> None:
    databases = {name: database_settings(name, db_name) for name in names}
    databases["default"] = database_settings("sqlite", db_name) | {
        "NAME": os.path.join(_SQLITE_DIR, "default.sqlite3"),
        "TEST": {"NAME": os.path.join(_SQLITE_DIR, "default_test.sqlite3")},
    }
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_onceonly"],
        DATABASES=databases,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()


def make_app(queue: str) -> Any:
    from celery import Celery

    app = Celery("onceonly_bench_outbox", broker=BROKER, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_default_routing_key=queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
    )

    @app.task(name="bench.welcome", shared=False)
    def welcome(user_id: int) -> None:
        return None

    return app


def measure_enqueue(alias: str, task: Any, n: int, rounds: int, batch: int) -> tuple[float, float]:
    """Median microseconds per transaction: (on_commit(delay), enqueue)."""
    from django.db import connections, transaction

    from django_onceonly.outbox import enqueue

    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_user (id INTEGER PRIMARY KEY, name VARCHAR(100))")
    counter = iter(range(10**9))

    def floor() -> None:
        with transaction.atomic(using=alias):
            user_id = next(counter)
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO bench_user VALUES (%s, %s)", [user_id, "u"])
            transaction.on_commit(lambda: task.delay(user_id), using=alias)

    def ours() -> None:
        with transaction.atomic(using=alias):
            user_id = next(counter)
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO bench_user VALUES (%s, %s)", [user_id, "u"])
            enqueue(task, user_id)

    for _ in range(50):  # warm both paths (connections, prepared pools)
        floor()
        ours()
    floors, ourses = [], []
    for _ in range(rounds):
        spent = {floor: 0.0, ours: 0.0}
        done = 0
        while done < n:
            for kind in (floor, ours):
                started = time.perf_counter()
                for _ in range(batch):
                    kind()
                spent[kind] += time.perf_counter() - started
            done += batch
        floors.append(spent[floor] / done * 1e6)
        ourses.append(spent[ours] / done * 1e6)
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE bench_user")
    return statistics.median(floors), statistics.median(ourses)


def measure_relay(
    alias: str, app: Any, task: Any, rows: int, chunk: int, clear: Callable[[], None]
) -> tuple[float, float]:
    """Messages per second: (task.delay in a loop, the relay draining as many rows).

    In chunks that alternate, so that both see the same load on a shared machine: each
    chunk publishes ``chunk`` messages with ``delay``, then writes ``chunk`` pending rows
    (not timed) and lets one relay drain them.
    """
    from django.utils import timezone

    from django_onceonly.models import OutboxMessage
    from django_onceonly.outbox import drain

    manager = OutboxMessage.objects.using(alias)
    delay_seconds = relay_seconds = 0.0
    done = 0
    while done < rows:
        size = min(chunk, rows - done)
        started = time.perf_counter()
        for i in range(size):
            task.delay(done + i)
        delay_seconds += time.perf_counter() - started

        created = timezone.now() - dt.timedelta(minutes=5)
        manager.bulk_create(
            [
                OutboxMessage(
                    task_name=task.name,
                    task_id=str(uuid.uuid4()),
                    payload=json.dumps({"args": [done + i], "kwargs": {}}),
                    created_at=created,
                )
                for i in range(size)
            ],
            batch_size=1000,
        )
        started = time.perf_counter()
        report = drain(app=app, batch_size=500, using=alias)
        relay_seconds += time.perf_counter() - started
        if report.published != size or manager.pending().exists():
            raise RuntimeError(f"the relay published {report.published} of {size}: {report.error}")
        manager.all().delete()
        clear()  # the broker's queue, so that it never holds more than 2 chunks
        done += size
    return rows / delay_seconds, rows / relay_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--databases", default="postgres,mariadb,sqlite")
    parser.add_argument("--n", type=int, default=1000, help="transactions per kind per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median)")
    parser.add_argument("--batch", type=int, default=50, help="transactions per turn")
    parser.add_argument("--relay-rows", type=int, default=5000, help="rows for the relay")
    parser.add_argument(
        "--chunk", type=int, default=5000, help="rows per alternating relay chunk (the backlog)"
    )
    parser.add_argument("--db-name", default="onceonly_bench_outbox", help="scratch database")
    parser.add_argument("--check", action="store_true", help="exit 1 above the target")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.databases.split(",") if name.strip()]
    configure(names, args.db_name)

    import redis
    from django.db import connections

    from django_onceonly.outbox import flush

    queue = f"onceonly-bench-outbox-{uuid.uuid4().hex[:8]}"
    app = make_app(queue)
    task = app.tasks["bench.welcome"]
    client = redis.Redis.from_url(BROKER)
    results: list[tuple[str, float, float, float, float]] = []
    try:
        for name in names:
            connection = connections[name]
            old_name = connection.settings_dict["NAME"]
            connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
            drop: Callable[[], None] = lambda c=connection, o=old_name: (  # noqa: E731
                c.creation.destroy_test_db(o, verbosity=0)
            )
            try:
                with _settings(ONCEONLY_DATABASE=name):
                    floor_us, ours_us = measure_enqueue(name, task, args.n, args.rounds, args.batch)
                    client.delete(queue)
                    delay_rate, relay_rate = measure_relay(
                        name, app, task, args.relay_rows, args.chunk, lambda: client.delete(queue)
                    )
                    client.delete(queue)
                results.append((name, floor_us, ours_us, delay_rate, relay_rate))
            finally:
                flush()  # the fast path's last marks, before their table goes
                connection.close()
                drop()
    finally:
        client.delete(queue, f"_kombu.binding.{queue}")
        shutil.rmtree(_SQLITE_DIR, ignore_errors=True)

    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Django {django.get_version()}; "
        f"n={args.n} transactions per kind, median of {args.rounds} rounds; "
        f"relay over {args.relay_rows:,} rows in backlogs of {args.chunk:,}; broker {BROKER}"
    )
    print()
    print("| database | on_commit(delay) us | enqueue us | ratio | target |")
    print("|---|---|---|---|---|")
    for name, floor_us, ours_us, _, _ in results:
        print(f"| {name} | {floor_us:.0f} | {ours_us:.0f} | {ours_us / floor_us:.2f} | {TARGET} |")
    print()
    print("| database | delay() loop msg/s | relay msg/s | ratio |")
    print("|---|---|---|---|")
    for name, _, _, delay_rate, relay_rate in results:
        print(f"| {name} | {delay_rate:,.0f} | {relay_rate:,.0f} | {relay_rate / delay_rate:.2f} |")
    missed = [row for row in results if row[2] / row[1] > TARGET]
    return 1 if args.check and missed else 0


def _settings(**values: Any) -> Any:
    from django.test.utils import override_settings

    return override_settings(**values)


if __name__ == "__main__":
    sys.exit(main())
