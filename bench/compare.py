"""Side by side: django-onceonly, its peers and the raw floors, in one interleaved run.

    .venv/bin/python bench/compare.py                       # small: a smoke run in seconds
    .venv/bin/python bench/compare.py --n 1000 --rounds 7 \
        --json docs/images/compare.json --chart docs/images/compare.png   # for the docs
    .venv/bin/python bench/compare.py --only ours,floors    # no peer needed

The peers and matplotlib are in the ``bench`` dependency group (``pip install --group
bench``), never a runtime dependency. Rows, on one Redis (``ONCEONLY_BENCH_REDIS_URL``,
default database 12 of 127.0.0.1:6379, every key under a prefix of this run, deleted at
the end) and one PostgreSQL (``ONCEONLY_BENCH_PG_HOST``/``_PORT``/``_USER``/``_PASSWORD``,
default 127.0.0.1:5432 as postgres; a scratch database of this run, ``--db-name``,
created with the real migrations and dropped at the end):

- floors: Redis ``SET NX`` on an existing key; ``SET NX`` + ``SET`` on a new key;
  PostgreSQL ``INSERT ... ON CONFLICT DO NOTHING`` on an existing key, ``INSERT`` +
  ``UPDATE`` on a new key and a ``SELECT`` by the unique (scope, key), all on a table
  with the records' columns and only that unique constraint (the minimal schema);
- celery-once 3 (its Redis backend) and celery-singleton: lock + unlock on a new key,
  and the same lock while it is held, through the methods their task classes call in
  ``apply_async`` and after the run (the broker publish is measured for no one);
- AWS Lambda Powertools ``idempotent_function`` on its Redis persistence layer: a new
  key (in progress, run, save the result) and a duplicate key (the stored result);
- ours, ``RedisStore`` and ``DatabaseStore`` on PostgreSQL, through ``check_lock`` and
  ``Lock`` only: a new key is ``check_lock`` + ``complete``, a duplicate key returns the
  replayed ``lock.result``;
- ``schema``: the PostgreSQL floors on a table with ``IdempotencyRecord``'s columns and
  indexes, and on copies of it that each lack one secondary index, so that each index's
  cost to a claim+complete shows: one durable claim at a time, and the server's own
  work per claim, in bulk (``BulkSQL``).

Every row runs in the same rounds: in each round the rows take turns in batches of
``--batch`` operations, in a new random order at every turn, so load from other
processes falls on all of them alike (the bulk rows take their turns among themselves,
see ``measure``). Each figure is the median over ``--rounds`` rounds of ``--n``
operations, after a warm-up. The script prints a table (µs/op, the
ratio to the row's floor and to the matching Powertools row, and this process's CPU
µs/op: the client's share, the rest being the wait for the server), writes every
figure as JSON (``--json``) and draws the chart (``--chart``, needs matplotlib).

This module stays whole, past the house's 400 lines: it is one command, and splitting
it would only spread one measurement over several files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import itertools
import json
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

RESULT = {"message_id": "bench-0001", "accepted": True}
DUPLICATE_KEYS = 100  # existing keys a duplicate row cycles through
TTL = 86_400  # seconds a finished record blocks duplicates, on every side
LEASE = 300  # seconds a claim is trusted while it runs, on every side
REDIS_URL = os.environ.get("ONCEONLY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
REDIS_CACHE = "onceonly_compare"
RUN = uuid.uuid4().hex[:8]
OUTPUT = Path(tempfile.gettempdir()) / "onceonly-compare"  # --json and --chart by default
PREFIX = f"onceonly-compare-{RUN}"  # in every Redis key this run writes: cleanup finds them

DATABASE_STORE = "django_onceonly.stores.DatabaseStore"
REDIS_STORE = "django_onceonly.stores.RedisStore"

# --only names -> the rows they select; "peers" is the three peers together.
CATEGORIES = ("floors", "ours", "celery-once", "celery-singleton", "powertools", "schema")
PEERS = ("celery-once", "celery-singleton", "powertools")
# The distribution each peer category needs, to say what is missing.
PEER_PACKAGES = {
    "celery-once": ("celery_once", "celery-once"),
    "celery-singleton": ("celery_singleton", "celery-singleton"),
    "powertools": ("aws_lambda_powertools", "aws-lambda-powertools"),
}

RunOps = Callable[[int], None]  # runs n operations


@dataclass
class Row:
    """One thing measured: what it runs, what it is compared with, and its figures."""

    name: str
    backend: str  # "Redis" or "PostgreSQL"
    group: str  # "new key" or "duplicate key"; "schema" rows are reported apart
    kind: str  # "floor", "peer" or "ours"
    category: str  # one of CATEGORIES
    run: RunOps
    floor: str | None = None  # name of the row that is this row's floor
    peer: str | None = None  # name of the peer row this one is matched with
    store: str | None = None  # ONCEONLY_STORE while this row runs (ours only)
    per_call: int = 1  # operations in each of run()'s n (bulk rows do several at once)
    phase: str = "main"  # rows are interleaved with the rows of their own phase
    rounds: list[float] = field(default_factory=list)  # µs/op per round
    cpu_rounds: list[float] = field(default_factory=list)  # this process's CPU µs/op per round

    @property
    def us(self) -> float:
        return statistics.median(self.rounds)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_rounds)


def keys(tag: str) -> Iterator[str]:
    """Fresh keys, never seen before in this run."""
    for i in itertools.count():
        yield f"{tag}-{RUN}-{i}"


# -- Django ------------------------------------------------------------------------------


def configure(db_name: str) -> None:
    """Settings for this run: PostgreSQL as ``default``, and a django-redis cache."""
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_onceonly"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": os.environ.get("ONCEONLY_BENCH_PG_NAME", "postgres"),
                "USER": os.environ.get("ONCEONLY_BENCH_PG_USER", "postgres"),
                "PASSWORD": os.environ.get("ONCEONLY_BENCH_PG_PASSWORD", ""),
                "HOST": os.environ.get("ONCEONLY_BENCH_PG_HOST", "127.0.0.1"),
                "PORT": os.environ.get("ONCEONLY_BENCH_PG_PORT", "5432"),
                "TEST": {"NAME": db_name},
            }
        },
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            REDIS_CACHE: {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": REDIS_URL,
                "KEY_PREFIX": PREFIX,
            },
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
        ONCEONLY_STORE=DATABASE_STORE,
        ONCEONLY_DATABASE="default",
        ONCEONLY_REDIS_CACHE=REDIS_CACHE,
        ONCEONLY_TTL=TTL,
        ONCEONLY_LEASE=LEASE,
    )
    django.setup()


@contextmanager
def scratch_database() -> Iterator[Any]:
    """The scratch PostgreSQL database, with the real migrations; dropped at the end."""
    from django.db import connection

    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield connection
    finally:
        from django_onceonly.stores import duplicates

        duplicates.flush()  # the duplicate counts still buffered, before the database goes
        for extra in _extra_connections:  # DROP DATABASE refuses while one is open
            extra.close()
        connection.close()
        connection.creation.destroy_test_db(old_name, verbosity=0)


_extra_connections: list[Any] = []


def no_flush_connection() -> Any:
    """A second connection to the scratch database whose commits do not wait for the WAL.

    With ``synchronous_commit=off`` a commit costs what the statement did (the heap, every
    index, the WAL records) without the wait for the disk, which on a shared machine is
    the noisiest part of a write and the same for every schema.
    """
    from django.db import connections

    extra = connections.create_connection("default")
    _extra_connections.append(extra)
    with extra.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
    return extra


# -- PostgreSQL floors -------------------------------------------------------------------


def record_columns() -> list[str]:
    from django_onceonly.models import IdempotencyRecord

    return [f.column for f in IdempotencyRecord._meta.local_fields if not f.primary_key]


def secondary_indexes() -> list[Any]:
    from django_onceonly.models import IdempotencyRecord

    return list(IdempotencyRecord._meta.indexes)


def create_table(connection: Any, tag: str, indexes: list[Any]) -> str:
    """A table with the records' columns, their unique (scope, key) and ``indexes``."""
    from django.apps.registry import Apps
    from django.db import models

    from django_onceonly.models import IdempotencyRecord

    table = f"onceonly_compare_{tag}"

    def renamed(index: Any) -> Any:
        _, args, kwargs = index.deconstruct()
        kwargs["name"] = f"cmp{tag}_{index.name.removeprefix('onceonly_')}"[:30]
        return models.Index(*args, **kwargs)

    class Meta:
        app_label = "onceonly_compare"
        apps = Apps()  # a registry of its own: these models never join the project's
        db_table = table
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name=f"cmp{tag}_scope_key_uniq")
        ]

    Meta.indexes = [renamed(index) for index in indexes]  # type: ignore[attr-defined]
    attrs: dict[str, Any] = {"__module__": __name__, "Meta": Meta}
    for model_field in IdempotencyRecord._meta.local_fields:
        attrs[model_field.name] = model_field.clone()
    model = type(f"Compare{tag.title()}", (models.Model,), attrs)
    with connection.schema_editor() as editor:
        editor.create_model(model)
    _tables.append(table)
    return table


_tables: list[str] = []  # every table create_table made, for analyze_tables()


def analyze_tables(connection: Any) -> None:
    """``ANALYZE`` the tables once they hold their first rows.

    Never analysed, a table looks empty to the planner, which then finds a bulk
    UPDATE's keys by scanning every row of scope ``''`` instead of looking each key up
    in the unique index: a cost that grows with the table. Statistics taken once are
    enough, as the planner scales them by the table's size.
    """
    with connection.cursor() as cursor:
        for table in _tables:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(table)}")


# Name -> SQL value of each column in a new claim; %(name)s are parameters.
CLAIM_VALUES = {
    "scope": "''",
    "key": "%(key)s",
    "status": "'in_progress'",
    "owner_token": "%(token)s",
    "fingerprint": "''",
    "result": "NULL",
    "error": "''",
    "task_name": "''",
    "task_id": "''",
    "metadata": "'{}'::jsonb",
    "created_at": "%(now)s",
    "updated_at": "%(now)s",
    "completed_at": "NULL",
    "lease_expires_at": "%(lease_end)s",
    "expires_at": "NULL",
    "duplicates_blocked": "0",
    "last_duplicate_at": "NULL",
}
# What a complete must write: the status, the result and the times.
COMPLETE_VALUES = {
    "status": "'completed'",
    "result": "%(result)s::jsonb",
    "updated_at": "%(now)s",
    "completed_at": "%(now)s",
    "lease_expires_at": "NULL",
    "expires_at": "%(expires)s",
}


def insert_sql(connection: Any, table: str, values: dict[str, str], source: str) -> str:
    """``INSERT ... ON CONFLICT DO NOTHING`` of ``values`` (name -> SQL) into ``table``."""
    q = connection.ops.quote_name
    columns = record_columns()
    unknown = set(columns) ^ set(values)
    if unknown:
        raise RuntimeError(f"the floor does not know these columns: {sorted(unknown)}")
    return (
        f"INSERT INTO {q(table)} ({', '.join(q(c) for c in columns)}) "
        f"{source.format(values=', '.join(values[c] for c in columns))} "
        f"ON CONFLICT ({q('scope')}, {q('key')}) DO NOTHING"
    )


def update_sql(connection: Any, table: str, where: str) -> str:
    q = connection.ops.quote_name
    assignments = ", ".join(f"{q(name)} = {value}" for name, value in COMPLETE_VALUES.items())
    return f"UPDATE {q(table)} SET {assignments} WHERE {q('scope')} = '' AND {where}"


class FloorSQL:
    """The cheapest autocommit statements that claim, complete and read a key in ``table``.

    On the same Django connection and driver as ``DatabaseStore``, in autocommit, with
    the default durability (every statement that writes waits for its WAL flush).
    """

    def __init__(self, connection: Any, table: str, tag: str) -> None:
        q = connection.ops.quote_name
        self.connection = connection
        self.insert = insert_sql(connection, table, CLAIM_VALUES, "VALUES ({values})")
        self.update = update_sql(connection, table, f"{q('key')} = %(key)s")
        # The read a duplicate needs: the status and the stored result.
        self.select = (
            f"SELECT {q('status')}, {q('result')}, {q('expires_at')} FROM {q(table)} "
            f"WHERE {q('scope')} = '' AND {q('key')} = %(key)s"
        )
        self.result = json.dumps(RESULT)
        self.new_keys = keys(f"sql{tag}")
        self.existing = [next(self.new_keys) for _ in range(DUPLICATE_KEYS)]
        for key in self.existing:
            self.claim(key)
            self.complete(key)

    def claim(self, key: str) -> None:
        now = dt.datetime.now(dt.UTC)
        params = {
            "key": key,
            "token": secrets.token_hex(16),
            "now": now,
            "lease_end": now + dt.timedelta(seconds=LEASE),
        }
        with self.connection.cursor() as cursor:
            cursor.execute(self.insert, params)

    def complete(self, key: str) -> None:
        now = dt.datetime.now(dt.UTC)
        params = {
            "key": key,
            "result": self.result,
            "now": now,
            "expires": now + dt.timedelta(seconds=TTL),
        }
        with self.connection.cursor() as cursor:
            cursor.execute(self.update, params)

    def claim_complete(self, n: int) -> None:
        new_keys = self.new_keys
        for _ in range(n):
            key = next(new_keys)
            self.claim(key)
            self.complete(key)

    def duplicate(self, n: int) -> None:
        existing = self.existing
        for i in range(n):
            self.claim(existing[i % DUPLICATE_KEYS])

    def read(self, n: int) -> None:
        existing = self.existing
        with self.connection.cursor() as cursor:
            for i in range(n):
                cursor.execute(self.select, {"key": existing[i % DUPLICATE_KEYS]})
                cursor.fetchone()


BULK = 10  # claims per operation of a bulk row; its figures are per claim


class BulkSQL:
    """Claim and complete ``BULK`` keys per operation, each step one statement.

    On a connection without the flush wait (``no_flush_connection``): with no round
    trip, parse, plan or commit per claim, what is left per claim is the server's work
    on the heap and on every index, which is what an index adds to each claim. On a
    shared machine that stays measurable when single statements drown in its noise.
    """

    def __init__(self, connection: Any, table: str, tag: str) -> None:
        q = connection.ops.quote_name
        self.connection = connection
        values = CLAIM_VALUES | {"key": "%(prefix)s || g", "owner_token": "md5(g::text)"}
        self.insert = insert_sql(
            connection, table, values, "SELECT {values} FROM generate_series(1, %(count)s) g"
        )
        self.update = update_sql(connection, table, f"{q('key')} = ANY(%(keys)s)")
        self.result = json.dumps(RESULT)
        self.calls = keys(f"bulk{tag}")

    def claim_complete(self, n: int) -> None:
        prefix = next(self.calls) + "-"
        count = n * BULK
        now = dt.datetime.now(dt.UTC)
        with self.connection.cursor() as cursor:
            cursor.execute(
                self.insert,
                {
                    "prefix": prefix,
                    "count": count,
                    "now": now,
                    "lease_end": now + dt.timedelta(seconds=LEASE),
                },
            )
            cursor.execute(
                self.update,
                {
                    "keys": [f"{prefix}{i}" for i in range(1, count + 1)],
                    "result": self.result,
                    "now": now,
                    "expires": now + dt.timedelta(seconds=TTL),
                },
            )


# -- Redis floors ------------------------------------------------------------------------


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


class FloorRedis:
    """Raw redis-py commands: ``SET NX`` claims, ``SET`` stores the result."""

    def __init__(self) -> None:
        self.conn = redis_client()
        self.result = json.dumps(RESULT)
        self.new_keys = keys(f"{PREFIX}:floor")
        self.existing = [next(self.new_keys) for _ in range(DUPLICATE_KEYS)]
        for key in self.existing:
            self.conn.set(key, self.result, ex=TTL)

    def claim_complete(self, n: int) -> None:
        conn, new_keys, result = self.conn, self.new_keys, self.result
        for _ in range(n):
            key = next(new_keys)
            conn.set(key, secrets.token_hex(16), nx=True, ex=LEASE)
            conn.set(key, result, ex=TTL)

    def duplicate(self, n: int) -> None:
        conn, existing = self.conn, self.existing
        for i in range(n):
            conn.set(existing[i % DUPLICATE_KEYS], secrets.token_hex(16), nx=True, ex=LEASE)


# -- the peers ---------------------------------------------------------------------------


def celery_app() -> Any:
    from celery import Celery

    app = Celery("onceonly_compare", broker=REDIS_URL, set_as_current=False)
    app.conf.ONCE = {
        "backend": "celery_once.backends.Redis",
        # Held locks must outlive the longest run: a duplicate row keeps them held.
        "settings": {"url": REDIS_URL, "default_timeout": TTL},
    }
    app.conf.singleton_backend_url = REDIS_URL
    app.conf.singleton_key_prefix = f"{PREFIX}:singleton:"
    app.conf.singleton_lock_expiry = TTL
    return app


class CeleryOnce:
    """celery-once's ``QueueOnce``: what ``apply_async`` locks and ``after_return`` unlocks.

    ``apply_async`` runs ``once_backend.raise_or_lock(get_key(args, kwargs), timeout)``
    before it publishes; the worker's ``after_return`` runs ``once_backend.clear_lock``
    with the same key. Those are the calls below, in that order; the publish is left out.
    """

    def __init__(self, app: Any) -> None:
        from celery_once import AlreadyQueued, QueueOnce

        @app.task(base=QueueOnce, name=f"{PREFIX}.once", once={"graceful": True})
        def send(order_id: str) -> dict[str, Any]:
            return dict(RESULT)

        self.task = send
        self.already_queued = AlreadyQueued
        self.new_keys = keys("once")
        self.held = [next(self.new_keys) for _ in range(DUPLICATE_KEYS)]
        for order_id in self.held:
            self.lock(order_id)

    def lock(self, order_id: str) -> None:
        task = self.task
        key = task.get_key((), {"order_id": order_id})
        task.once_backend.raise_or_lock(key, timeout=task.default_timeout)

    def lock_unlock(self, n: int) -> None:
        task, new_keys = self.task, self.new_keys
        for _ in range(n):
            order_id = next(new_keys)
            self.lock(order_id)
            task.after_return("SUCCESS", RESULT, "", (), {"order_id": order_id}, None)

    def duplicate(self, n: int) -> None:
        held = self.held
        for i in range(n):
            try:
                self.lock(held[i % DUPLICATE_KEYS])
            except self.already_queued:
                continue
            raise AssertionError("celery-once locked a key that was held")


class CelerySingleton:
    """celery-singleton's ``Singleton``: the lock ``apply_async`` takes, ``on_success`` frees.

    ``apply_async`` runs ``generate_lock`` and ``aquire_lock`` (``SET NX``) before it
    publishes, and on a held lock ``get_existing_task_id`` (``GET``) to answer with the
    running task; ``on_success`` runs ``release_lock``. The publish is left out.
    """

    def __init__(self, app: Any) -> None:
        from celery_singleton import Singleton

        @app.task(base=Singleton, name=f"{PREFIX}.singleton")
        def send(order_id: str) -> dict[str, Any]:
            return dict(RESULT)

        self.task = send
        self.uuid = __import__("kombu.utils.uuid", fromlist=["uuid"]).uuid
        self.new_keys = keys("singleton")
        self.held = [next(self.new_keys) for _ in range(DUPLICATE_KEYS)]
        for order_id in self.held:
            assert self.lock(order_id)

    def lock(self, order_id: str) -> bool:
        task = self.task
        lock = task.generate_lock(task.name, [], {"order_id": order_id})
        if task.aquire_lock(lock, self.uuid()):
            return True
        if not task.get_existing_task_id(lock):
            raise AssertionError("celery-singleton found a held lock without its task id")
        return False

    def lock_unlock(self, n: int) -> None:
        task, new_keys = self.task, self.new_keys
        for _ in range(n):
            order_id = next(new_keys)
            self.lock(order_id)
            task.on_success(RESULT, "", [], {"order_id": order_id})

    def duplicate(self, n: int) -> None:
        held = self.held
        for i in range(n):
            if self.lock(held[i % DUPLICATE_KEYS]):
                raise AssertionError("celery-singleton locked a key that was held")


class Powertools:
    """``idempotent_function`` on Powertools' Redis persistence layer, as its docs set it up."""

    def __init__(self) -> None:
        from aws_lambda_powertools.utilities.idempotency import (
            IdempotencyConfig,
            idempotent_function,
        )
        from aws_lambda_powertools.utilities.idempotency.persistence.cache import (
            CachePersistenceLayer,
        )

        with warnings.catch_warnings():
            # 3.x marks the Redis layer deprecated in favour of its own alias; same class.
            warnings.simplefilter("ignore", DeprecationWarning)
            layer = CachePersistenceLayer(url=REDIS_URL)
        config = IdempotencyConfig(event_key_jmespath="order_id", expires_after_seconds=TTL)

        @idempotent_function(
            data_keyword_argument="order",
            persistence_store=layer,
            config=config,
            key_prefix=f"{PREFIX}:powertools",
        )
        def send(order: dict[str, Any]) -> dict[str, Any]:
            return dict(RESULT)

        self.send = send
        # Outside Lambda there is no context to read the time left from; it only warns.
        warnings.filterwarnings("ignore", message="Couldn't determine the remaining time")
        self.new_keys = keys("powertools")
        self.existing = [next(self.new_keys) for _ in range(DUPLICATE_KEYS)]
        for order_id in self.existing:
            send(order={"order_id": order_id})

    def new_key(self, n: int) -> None:
        send, new_keys = self.send, self.new_keys
        for _ in range(n):
            send(order={"order_id": next(new_keys)})

    def duplicate(self, n: int) -> None:
        send, existing = self.send, self.existing
        for i in range(n):
            if send(order={"order_id": existing[i % DUPLICATE_KEYS]}) != RESULT:
                raise AssertionError("Powertools did not replay the stored result")


# -- ours --------------------------------------------------------------------------------


class Ours:
    """``check_lock`` + ``Lock.complete`` on the store ``ONCEONLY_STORE`` names now."""

    def __init__(self, tag: str) -> None:
        from django_onceonly import check_lock

        self.check_lock = check_lock
        self.new_keys = keys(tag)
        self.existing = [next(self.new_keys) for _ in range(DUPLICATE_KEYS)]
        for key in self.existing:
            check_lock(key).complete(RESULT)

    def claim_complete(self, n: int) -> None:
        check_lock, new_keys = self.check_lock, self.new_keys
        for _ in range(n):
            lock = check_lock(next(new_keys))
            lock.complete(RESULT)

    def duplicate(self, n: int) -> None:
        check_lock, existing = self.check_lock, self.existing
        for i in range(n):
            lock = check_lock(existing[i % DUPLICATE_KEYS])
            if not lock.duplicate or lock.result != RESULT:
                raise AssertionError("check_lock did not replay the stored result")


def set_store(path: str) -> None:
    """Point ``ONCEONLY_STORE`` at ``path`` (read live by ``check_lock``)."""
    settings.ONCEONLY_STORE = path


def check_stores_apart(ours_pg: Ours | None, ours_redis: Ours) -> None:
    """Fail loudly if a store switch did not take: each side's records are where they belong."""
    from django.core.cache import caches

    from django_onceonly.models import IdempotencyRecord

    records = IdempotencyRecord.objects
    if ours_pg and records.filter(key__in=ours_pg.existing).count() != DUPLICATE_KEYS:
        raise RuntimeError("DatabaseStore's records are not in PostgreSQL")
    if records.filter(key__in=ours_redis.existing).exists():
        raise RuntimeError("RedisStore's records went to PostgreSQL")
    # RedisStore names its keys through the cache's make_key (KEY_PREFIX:VERSION:...).
    pattern = caches[REDIS_CACHE].make_key("*")
    if sum(1 for _ in redis_client().scan_iter(match=pattern, count=1000)) < DUPLICATE_KEYS:
        raise RuntimeError("RedisStore's records are not in Redis")


# -- building the rows -------------------------------------------------------------------


FLOOR_REDIS_NEW = "floor: Redis SET NX + SET"
FLOOR_REDIS_DUP = "floor: Redis SET NX"
FLOOR_PG_NEW = "floor: PostgreSQL INSERT + UPDATE"
FLOOR_PG_DUP = "floor: PostgreSQL INSERT ON CONFLICT DO NOTHING"
FLOOR_PG_READ = "floor: PostgreSQL SELECT by (scope, key)"
PT_NEW = "Powertools idempotent_function, Redis"
PT_DUP = "Powertools idempotent_function, Redis (replay)"


def build_rows(only: set[str], connection: Any | None) -> tuple[list[Row], dict[str, Any]]:
    """The selected rows, set up and ready to run; and what the report says about them."""
    rows: list[Row] = []
    notes: dict[str, Any] = {}
    if "floors" in only:
        redis_floor = FloorRedis()
        rows += [
            Row(FLOOR_REDIS_NEW, "Redis", "new key", "floor", "floors", redis_floor.claim_complete),
            Row(
                FLOOR_REDIS_DUP, "Redis", "duplicate key", "floor", "floors", redis_floor.duplicate
            ),
        ]
    minimal = ""
    if only & {"floors", "schema"} and connection is not None:
        minimal = create_table(connection, "min", [])
    if "floors" in only and connection is not None:
        sql = FloorSQL(connection, minimal, "min")
        rows += [
            Row(FLOOR_PG_NEW, "PostgreSQL", "new key", "floor", "floors", sql.claim_complete),
            Row(FLOOR_PG_DUP, "PostgreSQL", "duplicate key", "floor", "floors", sql.duplicate),
            Row(FLOOR_PG_READ, "PostgreSQL", "duplicate key", "floor", "floors", sql.read),
        ]
    if "celery-once" in only or "celery-singleton" in only:
        app = celery_app()
    if "celery-once" in only:
        once = CeleryOnce(app)
        rows += [
            Row(
                "celery-once lock + unlock",
                "Redis",
                "new key",
                "peer",
                "celery-once",
                once.lock_unlock,
            ),
            Row(
                "celery-once lock, held",
                "Redis",
                "duplicate key",
                "peer",
                "celery-once",
                once.duplicate,
            ),
        ]
    if "celery-singleton" in only:
        single = CelerySingleton(app)
        rows += [
            Row(
                "celery-singleton lock + unlock",
                "Redis",
                "new key",
                "peer",
                "celery-singleton",
                single.lock_unlock,
            ),
            Row(
                "celery-singleton lock, held",
                "Redis",
                "duplicate key",
                "peer",
                "celery-singleton",
                single.duplicate,
            ),
        ]
    if "powertools" in only:
        powertools = Powertools()
        rows += [
            Row(PT_NEW, "Redis", "new key", "peer", "powertools", powertools.new_key),
            Row(PT_DUP, "Redis", "duplicate key", "peer", "powertools", powertools.duplicate),
        ]
    if "ours" in only:
        set_store(REDIS_STORE)
        ours_redis = Ours("redisstore")
        set_store(DATABASE_STORE)
        ours_pg = Ours("dbstore") if connection is not None else None
        check_stores_apart(ours_pg, ours_redis)
        rows += [
            Row(
                "ours RedisStore: check_lock + complete",
                "Redis",
                "new key",
                "ours",
                "ours",
                ours_redis.claim_complete,
                store=REDIS_STORE,
            ),
            Row(
                "ours RedisStore: check_lock (replay)",
                "Redis",
                "duplicate key",
                "ours",
                "ours",
                ours_redis.duplicate,
                store=REDIS_STORE,
            ),
        ]
        if ours_pg is not None:
            rows += [
                Row(
                    "ours DatabaseStore PostgreSQL: check_lock + complete",
                    "PostgreSQL",
                    "new key",
                    "ours",
                    "ours",
                    ours_pg.claim_complete,
                    store=DATABASE_STORE,
                ),
                Row(
                    "ours DatabaseStore PostgreSQL: check_lock (replay)",
                    "PostgreSQL",
                    "duplicate key",
                    "ours",
                    "ours",
                    ours_pg.duplicate,
                    store=DATABASE_STORE,
                ),
            ]
    if "schema" in only and connection is not None:
        rows += schema_rows(connection, minimal, notes)
    if connection is not None:
        analyze_tables(connection)
    link(rows)
    return rows, notes


SCHEMA_FULL_NEW = "schema: full, INSERT + UPDATE"
SCHEMA_FULL_DUP = "schema: full, ON CONFLICT on existing"
SCHEMA_MIN_NEW_BULK = "schema, server work per claim: minimal, INSERT + UPDATE"
SCHEMA_FULL_NEW_BULK = "schema, server work per claim: full, INSERT + UPDATE"


def schema_rows(connection: Any, minimal: str, notes: dict[str, Any]) -> list[Row]:
    """Floors on the records' full schema, and on copies that each lack one index.

    Each claim+complete floor runs twice: one claim at a time and durable, as a claim
    commits; and in bulk (``BulkSQL``), the server's own work per claim, where an
    index's cost stands out from the machine's noise.
    """
    indexes = secondary_indexes()
    no_flush = no_flush_connection()
    full_table = create_table(connection, "full", indexes)
    full = FloorSQL(connection, full_table, "full")
    rows = [
        Row(SCHEMA_FULL_NEW, "PostgreSQL", "schema", "floor", "schema", full.claim_complete),
        Row(SCHEMA_FULL_DUP, "PostgreSQL", "schema", "floor", "schema", full.duplicate),
    ]
    for name, table, tag in (
        (SCHEMA_MIN_NEW_BULK, minimal, "min"),
        (SCHEMA_FULL_NEW_BULK, full_table, "full"),
    ):
        bulk = BulkSQL(no_flush, table, tag)
        rows.append(
            Row(
                name,
                "PostgreSQL",
                "schema",
                "floor",
                "schema",
                bulk.claim_complete,
                per_call=BULK,
                phase="bulk",
            )
        )
    notes["indexes"] = {}
    for number, index in enumerate(indexes):
        rest = [other for other in indexes if other is not index]
        table = create_table(connection, f"no{number}", rest)
        durable = FloorSQL(connection, table, f"no{number}")
        bulk = BulkSQL(no_flush, table, f"no{number}")
        name = f"schema: without {index.name}, INSERT + UPDATE"
        name_bulk = f"schema, server work per claim: without {index.name}, INSERT + UPDATE"
        fields = ", ".join(index.fields) + (f" {index.opclasses[0]}" if index.opclasses else "")
        notes["indexes"][index.name] = {"fields": fields, "row": name, "row_bulk": name_bulk}
        rows += [
            Row(name, "PostgreSQL", "schema", "floor", "schema", durable.claim_complete),
            Row(
                name_bulk,
                "PostgreSQL",
                "schema",
                "floor",
                "schema",
                bulk.claim_complete,
                per_call=BULK,
                phase="bulk",
            ),
        ]
    return rows


def link(rows: list[Row]) -> None:
    """Give each row its floor and its matching Powertools row, where they were selected."""
    names = {row.name for row in rows}

    def pick(name: str) -> str | None:
        return name if name in names else None

    for row in rows:
        if row.kind != "floor":
            if row.backend == "Redis":
                new, dup = FLOOR_REDIS_NEW, FLOOR_REDIS_DUP
            else:
                new, dup = FLOOR_PG_NEW, FLOOR_PG_DUP
            row.floor = pick(new if row.group == "new key" else dup)
        if row.kind == "ours" and row.backend == "Redis":
            # The peer doing the same job on the same server; every peer is in peers_table().
            row.peer = pick(PT_NEW if row.group == "new key" else PT_DUP)


# -- measuring ---------------------------------------------------------------------------


def one_round(
    rows: list[Row], n: int, batch: int, order: random.Random
) -> list[tuple[float, float]]:
    """µs/op of each row over ``n`` operations, the rows taking turns in batches.

    Each row's wall time and this process's CPU time (the client's: its Python and its
    driver's); what is left of the wall time is the wait for the server.
    """
    spent = [0.0] * len(rows)
    used = [0.0] * len(rows)
    done = 0
    turn = list(range(len(rows)))
    gc.collect()
    gc.disable()
    try:
        while done < n:
            size = min(batch, n - done)
            # A new order at every turn: no row always follows the same neighbour (a
            # durable commit pays for flushing whatever WAL the row before it left).
            order.shuffle(turn)
            for index in turn:
                row = rows[index]
                if row.store:
                    set_store(row.store)
                start, started = time.perf_counter(), time.process_time()
                row.run(size)
                spent[index] += time.perf_counter() - start
                used[index] += time.process_time() - started
            done += size
    finally:
        gc.enable()
    return [
        (seconds / (n * row.per_call) * 1e6, cpu / (n * row.per_call) * 1e6)
        for seconds, cpu, row in zip(spent, used, rows, strict=True)
    ]


def measure(rows: list[Row], n: int, rounds: int, batch: int) -> None:
    """Every round runs each phase's rows interleaved; the phases follow one another.

    The bulk rows are a phase of their own: each of their statements leaves much WAL
    unflushed, which the next durable commit of any other row would have to flush.
    """
    order = random.Random(0)
    phases = [[row for row in rows if row.phase == phase] for phase in ("main", "bulk")]
    phases = [phase for phase in phases if phase]
    for phase in phases:
        one_round(phase, max(n // 4, 1), batch, order)  # warm-up: connections, plans, buffers
    for _ in range(rounds):
        for phase in phases:
            for row, (us, cpu) in zip(phase, one_round(phase, n, batch, order), strict=True):
                row.rounds.append(us)
                row.cpu_rounds.append(cpu)


# -- reporting ---------------------------------------------------------------------------


def ratio(row: Row, other: str | None, by_name: dict[str, Row]) -> float | None:
    return row.us / by_name[other].us if other else None


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main_table(rows: list[Row]) -> str:
    by_name = {row.name: row for row in rows}
    lines = [
        "| operation | row | µs/op | x its floor | x Powertools | client CPU µs/op |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for group in ("new key", "duplicate key"):
        for row in (row for row in rows if row.group == group):
            name = f"**{row.name}**" if row.kind == "ours" else row.name
            lines.append(
                f"| {group} | {name} | {row.us:,.0f} | {fmt(ratio(row, row.floor, by_name))} "
                f"| {fmt(ratio(row, row.peer, by_name))} | {row.cpu:,.0f} |"
            )
    return "\n".join(lines)


def peers_table(rows: list[Row]) -> str:
    """Each peer row beside each of our stores doing the same operation: ours ÷ peer."""
    ours = {row.backend: row for row in rows if row.kind == "ours" and row.group == "new key"}
    ours_dup = {row.backend: row for row in rows if row.kind == "ours" and row.group != "new key"}
    peers = [row for row in rows if row.kind == "peer"]
    if not ours or not peers:
        return ""
    stores = {"Redis": "RedisStore", "PostgreSQL": "DatabaseStore (PostgreSQL)"}
    backends = [backend for backend in stores if backend in ours]
    lines = [
        "| peer row | µs/op | " + " | ".join(f"{stores[b]} ÷ peer" for b in backends) + " |",
        "|---|---:|" + "---:|" * len(backends),
    ]
    for peer in peers:
        mine = ours if peer.group == "new key" else ours_dup
        cells = [f"{mine[b].us / peer.us:.2f}" if b in mine else "-" for b in backends]
        lines.append(f"| {peer.name} | {peer.us:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def index_costs(rows: list[Row], notes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per secondary index: its columns, and what it costs a claim+complete (full - without).

    One claim at a time and durable, and the server's own work per claim (in bulk); a
    negative cost is noise larger than the index.
    """
    by_name = {row.name: row for row in rows}
    if SCHEMA_FULL_NEW not in by_name:
        return {}
    costs = {}
    for index_name, note in notes["indexes"].items():
        cost: dict[str, Any] = {"fields": note["fields"]}
        for suffix, full_name, row_name in (
            ("", SCHEMA_FULL_NEW, note["row"]),
            ("_server_work", SCHEMA_FULL_NEW_BULK, note["row_bulk"]),
        ):
            full, without = by_name[full_name].us, by_name[row_name].us
            cost[f"without_us_per_op{suffix}"] = round(without, 1)
            cost[f"cost_us_per_op{suffix}"] = round(full - without, 1)
            cost[f"cost_share{suffix}"] = round((full - without) / full, 3)
        costs[index_name] = cost
    return costs


def schema_table(rows: list[Row], notes: dict[str, Any]) -> str:
    """The full schema's floors beside the minimal one's, and what each index costs."""
    by_name = {row.name: row for row in rows}
    if SCHEMA_FULL_NEW not in by_name:
        return ""

    def us(name: str) -> str:
        return f"{by_name[name].us:,.0f}" if name in by_name else "-"

    def times(name: str, base: str) -> str:
        if name in by_name and base in by_name:
            return f"{by_name[name].us / by_name[base].us:.2f}"
        return "-"

    lines = [
        "| PostgreSQL table | INSERT + UPDATE µs/op | x minimal "
        "| server work per claim (bulk) | x minimal | ON CONFLICT (existing) µs/op "
        "| x minimal |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| minimal: columns + unique (scope, key) | {us(FLOOR_PG_NEW)} | 1.00 "
        f"| {us(SCHEMA_MIN_NEW_BULK)} | 1.00 | {us(FLOOR_PG_DUP)} | 1.00 |",
        f"| full: IdempotencyRecord's columns and indexes | {us(SCHEMA_FULL_NEW)} "
        f"| {times(SCHEMA_FULL_NEW, FLOOR_PG_NEW)} | {us(SCHEMA_FULL_NEW_BULK)} "
        f"| {times(SCHEMA_FULL_NEW_BULK, SCHEMA_MIN_NEW_BULK)} | {us(SCHEMA_FULL_DUP)} "
        f"| {times(SCHEMA_FULL_DUP, FLOOR_PG_DUP)} |",
        "",
        "| index dropped from the full table | on | INSERT + UPDATE without it, µs/op "
        "| the index costs | server work per claim without it, µs | the index costs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for index_name, cost in index_costs(rows, notes).items():
        lines.append(
            f"| {index_name} | {cost['fields']} | {cost['without_us_per_op']:,.0f} "
            f"| {cost['cost_us_per_op']:+,.0f} µs ({cost['cost_share']:+.0%}) "
            f"| {cost['without_us_per_op_server_work']:,.1f} "
            f"| {cost['cost_us_per_op_server_work']:+,.1f} µs "
            f"({cost['cost_share_server_work']:+.0%}) |"
        )
    lines.append("")
    for row in rows:
        if row.kind == "ours" and row.backend == "PostgreSQL":
            full = SCHEMA_FULL_NEW if row.group == "new key" else SCHEMA_FULL_DUP
            lines.append(
                f"{row.name}: {row.us:,.0f} µs/op = {times(row.name, row.floor or '')}x the "
                f"minimal-schema floor, {times(row.name, full)}x the full-schema floor"
            )
    return "\n".join(lines)


def environment(connection: Any | None) -> dict[str, Any]:
    """What the figures were measured on."""
    versions = {}
    for package in (
        "django",
        "redis",
        "django-redis",
        "psycopg",
        "celery",
        "celery-once",
        "celery-singleton",
        "aws-lambda-powertools",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    server: dict[str, Any] = {"redis": redis_client().info("server")["redis_version"]}
    if connection is not None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('server_version'), current_setting('fsync'), "
                "current_setting('synchronous_commit')"
            )
            version, fsync, synchronous = cursor.fetchone()
        server["postgresql"] = f"{version} (fsync={fsync}, synchronous_commit={synchronous})"
    return {
        "when": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "cores": os.cpu_count(),
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "hiredis": importlib.util.find_spec("hiredis") is not None,
        "servers": server,
        "packages": versions,
    }


def to_json(
    rows: list[Row], notes: dict[str, Any], env: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    by_name = {row.name: row for row in rows}
    return {
        "environment": env,
        "settings": {"n": args.n, "rounds": args.rounds, "batch": args.batch, "only": args.only},
        "rows": [
            {
                "name": row.name,
                "group": row.group,
                "kind": row.kind,
                "category": row.category,
                "us_per_op": round(row.us, 1),
                "rounds_us_per_op": [round(value, 1) for value in row.rounds],
                "cpu_us_per_op": round(row.cpu, 1),
                "floor": row.floor,
                "ratio_to_floor": ratio(row, row.floor, by_name),
                "peer": row.peer,
                "ratio_to_peer": ratio(row, row.peer, by_name),
            }
            for row in rows
        ],
        "schema_indexes": index_costs(rows, notes),
    }


def draw(rows: list[Row], env: dict[str, Any], path: Path) -> bool:
    """Horizontal bars (µs/op), one panel per server and operation, each row's floor marked.

    Each panel has its own scale: a durable PostgreSQL commit costs several Redis round
    trips, and one scale for both would flatten every Redis bar.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    by_name = {row.name: row for row in rows}
    panels = [
        (f"{backend}: {group}", [r for r in rows if r.backend == backend and r.group == group])
        for backend in ("Redis", "PostgreSQL")
        for group in ("new key", "duplicate key")
    ]
    panels = [(title, panel) for title, panel in panels if panel]
    colours = {"floor": "#b0b0b0", "peer": "#4c78a8", "ours": "#f58518"}
    heights = [len(panel) for _, panel in panels]
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 1.3 + 0.42 * sum(heights) + 0.75 * len(panels)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for axis, (title, panel) in zip(axes[:, 0], panels, strict=True):
        # From the top: floors, peers, ours; the cheapest first within each.
        ordered = sorted(panel, key=lambda row: (list(colours).index(row.kind), row.us))
        ordered.reverse()
        positions = range(len(ordered))
        axis.barh(
            positions,
            [row.us for row in ordered],
            color=[colours[row.kind] for row in ordered],
            height=0.7,
        )
        for y, row in zip(positions, ordered, strict=True):
            label = f" {row.us:,.0f} µs"
            if row.floor:
                floor = by_name[row.floor].us
                axis.plot([floor, floor], [y - 0.42, y + 0.42], color="black", linewidth=2)
                label += f"  ({row.us / floor:.2f}x floor)"
            axis.text(row.us, y, label, va="center", fontsize=8)
        axis.set_yticks(list(positions), [row.name for row in ordered], fontsize=8.5)
        axis.set_xlim(0, max(row.us for row in panel) * 1.5)
        axis.set_title(title, loc="left", fontsize=10, fontweight="bold")
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
    axes[-1, 0].set_xlabel("µs per operation, lower is better; black tick: the row's floor")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour in colours.values()]
    figure.legend(handles, ["floor (raw commands)", "peer", "django-onceonly"], loc="upper right")
    figure.suptitle(
        f"django-onceonly beside its peers: one interleaved run\n{env['when']}, "
        f"{env['cores']} cores, services on loopback, median of {env['rounds']} rounds",
        fontsize=10,
        x=0.01,
        ha="left",
    )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def delete_redis_keys() -> int:
    """Delete every key this run wrote (they all contain its prefix); never FLUSH."""
    from django_onceonly.stores import duplicates

    duplicates.flush()  # the duplicate counts still buffered, before their records go
    conn = redis_client()
    names = list(conn.scan_iter(match=f"*{PREFIX}*", count=1000))
    for start in range(0, len(names), 1000):
        conn.unlink(*names[start : start + 1000])
    return len(names)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="operations per row per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (median)")
    parser.add_argument("--batch", type=int, default=20, help="operations per turn")
    parser.add_argument(
        "--only",
        default=",".join(CATEGORIES),
        help=f"comma-separated, from: {', '.join(CATEGORIES)}, peers (the three peers)",
    )
    parser.add_argument(
        "--db-name", default=f"onceonly_compare_{RUN}", help="scratch PostgreSQL database"
    )
    # Not docs/images by default: a smoke run must never replace the published figures.
    parser.add_argument(
        "--json", type=Path, default=OUTPUT / "compare.json", help="figures as JSON"
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=OUTPUT / "compare.png",
        help="the chart (PNG; needs matplotlib); '' for none. The docs' is docs/images/compare.png",
    )
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if "peers" in only:
        only = (only - {"peers"}) | set(PEERS)
    unknown = only - set(CATEGORIES)
    if unknown:
        parser.error(f"unknown --only name(s): {', '.join(sorted(unknown))}")
    missing = [
        f"{package} (for {name})"
        for name, (module, package) in PEER_PACKAGES.items()
        if name in only and importlib.util.find_spec(module) is None
    ]
    if missing:
        parser.error(
            f"not installed: {', '.join(missing)}; run `pip install --group bench` "
            "or leave them out with --only ours,floors,schema"
        )
    if args.n < 1 or args.rounds < 1 or args.batch < 1:
        parser.error("--n, --rounds and --batch must be at least 1")
    args.only_set = only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    load_before = [round(value, 2) for value in os.getloadavg()]
    started = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    configure(args.db_name)
    needs_pg = bool(args.only_set & {"floors", "ours", "schema"})
    with scratch_database() if needs_pg else _nothing() as connection:
        try:
            rows, notes = build_rows(args.only_set, connection)
            measure(rows, args.n, args.rounds, args.batch)
            env = environment(connection) | {
                "rounds": args.rounds,
                "started": started,
                "load_average_before": load_before,
                "redis_url": REDIS_URL,
                "redis_prefix": PREFIX,
                "scratch_database": args.db_name if connection is not None else None,
            }
        finally:
            deleted = delete_redis_keys()
    print(
        f"{started} to {env['when']}, {env['cores']} cores, load average (1, 5, 15 min) "
        f"{load_before} before, {env['load_average_after']} after; Python {env['python']}; "
        f"n={args.n}, batch={args.batch}, median of {args.rounds} rounds"
    )
    print("  " + ", ".join(f"{k} {v}" for k, v in env["servers"].items()))
    print("  " + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v))
    print(f"  hiredis parser: {'yes' if env['hiredis'] else 'no'}; {deleted} Redis keys deleted")
    print()
    print(main_table(rows))
    for title, text in (
        ("Ours against each peer", peers_table(rows)),
        ("PostgreSQL schema", schema_table(rows, notes)),
    ):
        if text:
            print(f"\n{title}\n\n{text}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(to_json(rows, notes, env, args), indent=2) + "\n")
    print(f"\nfigures: {args.json}")
    if str(args.chart) not in ("", "."):
        if draw(rows, env, args.chart):
            print(f"chart: {args.chart}")
        else:
            print("chart: skipped (matplotlib is not installed: pip install --group bench)")
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    sys.exit(main())
