"""Throughput of ``OnceTask`` against a plain Celery ``Task``, with a real worker and broker.

    .venv/bin/python bench/tasks.py [--n 2000] [--rounds 3] [--broker redis://127.0.0.1:6379/10]

One worker (``celery worker -P prefork -c 2``, started by this script, consuming queues
of its own) runs N no-op tasks of each kind per round, in the same run:

- ``plain``: ``@app.task(ignore_result=True) def noop(run, i)``;
- ``once``: the same body with ``base=OnceTask, once_key="bench-{run}-{i}"``: every
  message is a new intent, so each execution claims its key and stores its result
  (``DatabaseStore`` on PostgreSQL, a scratch database this script creates and drops);
- ``durable``: the cheapest correct at-most-once task, written by hand, the floor
  ``OnceTask`` is held to: one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` of the
  intent's row into the same records table before the body (the body is skipped when
  the row was already there), one ``UPDATE`` of it to ``completed`` after, both
  autocommit on the same database; with ``--store redis``, ``SET NX PX`` of the key
  before and ``SET XX`` of the result after, on the store's Redis;
- ``duplicate``: ``once`` messages for intents that already completed (each execution
  answers with the stored result).

For each round the N messages are first published to a queue nobody consumes; the
clock starts when the worker is told to consume it (``add_consumer``) and stops when the
N-th task has finished (a ``task_postrun`` receiver counts them in Redis, for every kind
alike). Kinds alternate within a round, each round starting with the next kind; each
figure is the median over the rounds, and the ratios' line also gives the median of
the per-round ratios (each round's kinds ran within seconds of each other).
The worker's database connection is persistent (``CONN_MAX_AGE=None``), as it should be
in any worker that uses the database on every task.

``--eager`` measures the same kinds without a worker or broker: this process runs each
task with ``Task.apply`` (Celery's own tracing, in process), the kinds in turns as above,
and prints the client CPU per task (``time.process_time``) beside the wall time. That
is the cost per task in the worker's own process, steadier than throughput on a shared
machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import django
from django.conf import settings

BROKER = os.environ.get("ONCEONLY_BENCH_BROKER", "redis://127.0.0.1:6379/10")
DB_NAME = os.environ.get("ONCEONLY_BENCH_TASKS_DB", "onceonly_bench_tasks")
REDIS_STORE = os.environ.get("ONCEONLY_BENCH_REDIS_STORE", "redis://127.0.0.1:6379/11")
COUNTER = "onceonly-bench-tasks:done:{}"  # one per queue
STORES = {
    "database": "django_onceonly.stores.DatabaseStore",
    "redis": "django_onceonly.stores.RedisStore",
}
TARGET = 0.7  # OnceTask throughput at least this share of the plain task's
DURABLE_TARGET = 0.9  # ... and at least this share of the hand-written durable task's


def _configure() -> None:
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_onceonly"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                # The worker gets the scratch database's real name from the script.
                "NAME": os.environ.get("ONCEONLY_BENCH_WORKER_DB", "postgres"),
                "USER": os.environ.get("ONCEONLY_BENCH_PG_USER", "postgres"),
                "PASSWORD": os.environ.get("ONCEONLY_BENCH_PG_PASSWORD", ""),
                "HOST": os.environ.get("ONCEONLY_BENCH_PG_HOST", "127.0.0.1"),
                "PORT": os.environ.get("ONCEONLY_BENCH_PG_PORT", "5432"),
                "CONN_MAX_AGE": None,
                "OPTIONS": {"server_side_binding": os.environ.get("ONCEONLY_BENCH_SSB") == "1"},
                "TEST": {"NAME": DB_NAME},
            }
        },
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "onceonly": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": REDIS_STORE,
                "KEY_PREFIX": os.environ.get("ONCEONLY_BENCH_REDIS_PREFIX", "onceonly-bench"),
            },
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
        ONCEONLY_STORE=STORES[os.environ.get("ONCEONLY_BENCH_STORE", "database")],
        ONCEONLY_DATABASE="default",
        ONCEONLY_REDIS_CACHE="onceonly",
    )
    django.setup()


_configure()

from celery import Celery, signals  # noqa: E402

from django_onceonly.celery import OnceTask  # noqa: E402

app = Celery("onceonly_bench", broker=BROKER, set_as_current=False)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop", shared=False)
def noop(run: str, i: int) -> None:
    return None


@app.task(name="bench.once_noop", base=OnceTask, shared=False, once_key="bench-{run}-{i}")
def once_noop(run: str, i: int) -> None:
    return None


# The hand-written durable task: what each store's "claim, run, record" costs by hand.
RECORDS = "django_onceonly_idempotencyrecord"
DURABLE_INSERT = f"""
INSERT INTO {RECORDS} (scope, key, status, owner_token, fingerprint, error, task_name,
    task_id, metadata, created_at, updated_at, lease_expires_at, duplicates_blocked)
VALUES ('', %s, 'in_progress', %s, '', '', 'bench.durable_noop', %s, '{{}}', now(), now(),
    now() + interval '5 minutes', 0)
ON CONFLICT (scope, key) DO NOTHING RETURNING id
"""
DURABLE_UPDATE = f"""
UPDATE {RECORDS} SET status = 'completed', result = 'null', updated_at = now(),
    completed_at = now(), lease_expires_at = NULL, expires_at = now() + interval '1 day'
WHERE id = %s
"""
_store_redis: Any = None


@app.task(name="bench.durable_noop", bind=True, shared=False)
def durable_noop(self: Any, run: str, i: int) -> None:
    global _store_redis
    key = f"bench-durable-{run}-{i}"
    token = uuid.uuid4().hex
    if os.environ.get("ONCEONLY_BENCH_STORE", "database") == "redis":
        if _store_redis is None:
            import redis

            _store_redis = redis.Redis.from_url(REDIS_STORE)
        name = f"{settings.CACHES['onceonly']['KEY_PREFIX']}:{key}"
        if not _store_redis.set(name, token, nx=True, px=300_000):
            return None  # claimed before: at most once
        _store_redis.set(name, "null", xx=True, px=86_400_000)
        return None
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(DURABLE_INSERT, [key, token, self.request.id or ""])
        row = cursor.fetchone()
        if row is None:
            return None  # claimed before: at most once
        # The body (a no-op, as in the other kinds) runs here.
        cursor.execute(DURABLE_UPDATE, [row[0]])
    return None


_redis: Any = None


@signals.task_postrun.connect
def _count(task: Any = None, **_: Any) -> None:
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(BROKER)
    _redis.incr(COUNTER.format(task.request.delivery_info.get("routing_key", "")))


# -- the script ----------------------------------------------------------------------------


def start_worker(
    db_name: str, idle_queue: str, hostname: str, log: str, concurrency: int, store: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ONCEONLY_BENCH_WORKER_DB": db_name, "ONCEONLY_BENCH_STORE": store}
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.tasks",
        "worker",
        "-P",
        "prefork",
        "-c",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-Q",
        idle_queue,
        "-n",
        hostname,
        "--loglevel",
        "WARNING",
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while not app.control.ping(destination=[hostname], timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_worker(process)
            with open(log, errors="replace") as file:
                raise RuntimeError(f"the worker did not start:\n{file.read()[-3000:]}")
    return process


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def measure(kind: str, n: int, hostname: str, client: Any, completed_run: str) -> float:
    """Tasks per second for one round of ``n`` tasks of ``kind``."""
    queue = f"onceonly-bench-{kind}-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:12]
    task: Any = {"plain": noop, "durable": durable_noop}.get(kind, once_noop)
    if kind == "duplicate":
        run = completed_run
    with app.producer_or_acquire() as producer:
        for i in range(n):
            task.apply_async((run, i), queue=queue, producer=producer)
    counter = COUNTER.format(queue)
    client.delete(counter)
    started = time.perf_counter()
    app.control.add_consumer(queue, destination=[hostname], reply=True, timeout=10)
    while int(client.get(counter) or 0) < n:
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    app.control.cancel_consumer(queue, destination=[hostname], reply=True, timeout=10)
    client.delete(counter)
    return n / elapsed


def drop_scratch(connection: Any, old_name: str, store: str) -> None:
    """Drop the scratch database, and the store's Redis records of this run."""
    import redis

    from django_onceonly.stores import duplicates

    duplicates.flush()  # counts an eager run's duplicates left buffered, while the table is there
    connection.creation.destroy_test_db(old_name, verbosity=0)
    if store == "redis":
        records = redis.Redis.from_url(REDIS_STORE)
        prefix = settings.CACHES["onceonly"]["KEY_PREFIX"]
        for name in records.scan_iter(match=f"{prefix}:*", count=1000):
            records.unlink(name)


def measure_eager(kind: str, n: int, completed_run: str) -> tuple[float, float]:
    """Client CPU and wall µs per task for ``n`` tasks of ``kind`` run here by ``apply``."""
    run = completed_run if kind == "duplicate" else uuid.uuid4().hex[:12]
    task: Any = {"plain": noop, "durable": durable_noop}.get(kind, once_noop)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        task.apply((run, i))
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


def run_eager(args: argparse.Namespace) -> int:
    """``--eager``: every kind in this process, in turns; client CPU and wall per task."""
    # This process is the worker now: its store and the durable task's must be the one
    # asked for, and the postrun counter (a Redis INCR per task) is left out.
    os.environ["ONCEONLY_BENCH_STORE"] = args.store
    settings.ONCEONLY_STORE = STORES[args.store]
    signals.task_postrun.disconnect(_count)
    kinds = ["plain", "durable", "once", "duplicate"]
    figures: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    completed = uuid.uuid4().hex[:12]
    for kind in kinds:  # warm-up, and the completed intents "duplicate" asks for again
        measure_eager(kind if kind != "duplicate" else "once", args.n, completed)
    for round_no in range(args.rounds):
        start = round_no % len(kinds)
        for kind in kinds[start:] + kinds[:start]:
            figures[kind].append(measure_eager(kind, args.n, completed))
    cpu = {kind: statistics.median(c for c, _ in values) for kind, values in figures.items()}
    wall = {kind: statistics.median(w for _, w in values) for kind, values in figures.items()}
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Celery {__import__('celery').__version__}, "
        f"store {STORES[args.store].rsplit('.', 1)[-1]}"
        f"{' on PostgreSQL' if args.store == 'database' else ''}; eager (Task.apply in "
        f"this process); n={args.n}, median of {args.rounds} rounds"
    )
    print()
    print(f"{'kind':<12}{'CPU µs/task':>13}{'x durable':>11}{'wall µs/task':>14}{'x durable':>11}")
    for kind in kinds:
        print(
            f"{kind:<12}{cpu[kind]:>13.0f}{cpu[kind] / cpu['durable']:>11.2f}"
            f"{wall[kind]:>14.0f}{wall[kind] / wall['durable']:>11.2f}"
        )
    print()
    print(
        f"OnceTask (new intents): {cpu['once'] - cpu['durable']:.0f} µs of client CPU per "
        f"task more than the hand-written durable task ({cpu['once'] / cpu['durable']:.2f}x)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="tasks per kind per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    parser.add_argument(
        "--store", choices=sorted(STORES), default="database", help="the worker's ONCEONLY_STORE"
    )
    parser.add_argument(
        "--no-fsync-wait",
        action="store_true",
        help="set synchronous_commit=off on the scratch database: shows what is left "
        "of the cost when commits do not wait for the disk (NOT a safe setting for records)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 below the target")
    parser.add_argument(
        "--eager",
        action="store_true",
        help="no worker: run the tasks in this process (Task.apply) and print the client "
        "CPU per task",
    )
    args = parser.parse_args(argv)

    import redis
    from django.db import connections
    from django.utils.module_loading import import_string

    client = redis.Redis.from_url(BROKER)
    store = import_string(STORES[args.store])()
    connection = connections["default"]
    old_name = connection.settings_dict["NAME"]
    db_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    if args.no_fsync_wait:
        with connection.cursor() as cursor:
            cursor.execute(
                f"ALTER DATABASE {connection.ops.quote_name(db_name)} SET synchronous_commit = off"
            )
    if args.eager:
        try:
            return run_eager(args)
        finally:
            drop_scratch(connection, old_name, args.store)
    hostname = f"bench-{uuid.uuid4().hex[:8]}@127.0.0.1"
    idle = f"onceonly-bench-idle-{uuid.uuid4().hex[:8]}"
    log = os.path.join("/tmp", f"onceonly-bench-tasks-{os.getpid()}.log")
    process = start_worker(db_name, idle, hostname, log, args.concurrency, args.store)
    figures: dict[str, list[float]] = {"plain": [], "durable": [], "once": [], "duplicate": []}
    try:
        # Warm-up (and the completed intents the "duplicate" rounds ask for again).
        completed = uuid.uuid4().hex[:12]
        warm_n = min(args.n, 500)
        with app.producer_or_acquire() as producer:
            for i in range(args.n):
                once_noop.apply_async((completed, i), queue=idle, producer=producer)
            for i in range(warm_n):
                noop.apply_async((completed, i), queue=idle, producer=producer)
                durable_noop.apply_async((completed, i), queue=idle, producer=producer)
        while (
            store.get("", f"bench-{completed}-{args.n - 1}") is None
            or int(client.get(COUNTER.format(idle)) or 0) < args.n + 2 * warm_n
        ):
            time.sleep(0.1)
        time.sleep(1)
        kinds = list(figures)
        for round_no in range(args.rounds):
            # Each round starts with the next kind: none always follows the same one.
            start = round_no % len(kinds)
            for kind in kinds[start:] + kinds[:start]:
                figures[kind].append(measure(kind, args.n, hostname, client, completed))
    finally:
        stop_worker(process)
        # The queues, their kombu bindings and the counters of this run.
        for pattern in ("onceonly-bench-*", "_kombu.binding*.onceonly-bench-*"):
            for name in client.scan_iter(match=pattern, count=1000):
                client.unlink(name)
        drop_scratch(connection, old_name, args.store)

    median = {kind: statistics.median(values) for kind, values in figures.items()}
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Celery {__import__('celery').__version__}, "
        f"broker {BROKER.split('@')[-1]}, store {STORES[args.store].rsplit('.', 1)[-1]}"
        f"{' on PostgreSQL' if args.store == 'database' else ''}; "
        f"worker -P prefork -c {args.concurrency}; n={args.n}, median of {args.rounds} rounds"
        + ("; synchronous_commit=off" if args.no_fsync_wait else "")
    )
    print()
    print(f"{'kind':<12}{'tasks/s':>10}{'x plain':>9}{'x durable':>11}   rounds (tasks/s)")
    for kind, values in figures.items():
        rounds = " ".join(f"{value:.0f}" for value in values)
        print(
            f"{kind:<12}{median[kind]:>10.0f}{median[kind] / median['plain']:>9.2f}"
            f"{median[kind] / median['durable']:>11.2f}   {rounds}"
        )
    print()
    missed = False
    for floor, target, label in (
        ("plain", TARGET, "plain Task"),
        ("durable", DURABLE_TARGET, "hand-written durable task"),
    ):
        ratio = median["once"] / median[floor]
        per_round = statistics.median(
            once / other for once, other in zip(figures["once"], figures[floor], strict=True)
        )
        missed |= ratio < target
        verdict = "meets" if ratio >= target else "MISSES"
        print(
            f"OnceTask (new intents) / {label} = {ratio:.2f} (median of the rounds' ratios "
            f"{per_round:.2f}): {verdict} the target {target}"
        )
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
