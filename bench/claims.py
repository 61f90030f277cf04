"""What a claim costs, as a ratio to the cheapest SQL that could do the same job.

    .venv/bin/python bench/claims.py [--n 2000] [--rounds 7] [--databases postgres,mariadb,sqlite,redis]

Per database, in one run, through the same Django connection and driver:

- ``claim+complete`` on a new key: ``check_lock(key)`` then ``lock.complete(result)``,
  against the floor ``INSERT ... ON CONFLICT DO NOTHING`` (MariaDB: ``INSERT IGNORE``)
  of the same row into an identical table, then an ``UPDATE`` of it, in autocommit;
- ``duplicate check`` on a completed key: ``check_lock(key)``, against the floor of that
  single ``INSERT ... ON CONFLICT DO NOTHING`` on an existing key.

For ``redis`` (``RedisStore`` on ``ONCEONLY_BENCH_REDIS_URL``, default database 14 of
127.0.0.1:6379, keys under a prefix of this run, deleted at the end) the floors are raw
redis-py commands on the store's own connection: two ``SET`` round trips (``SET NX``,
then ``SET`` of the result) for ``claim+complete``, one ``SET NX`` on an existing key for
the duplicate check. Three more rows show where a duplicate check's time goes: the same
check through ``RedisStore.claim`` alone (no ``check_lock``), the plain ``HMGET`` it
sends for a key it has seen taken, alone (no Python of ours), and the claim script's
``EVALSHA`` alone, which a process that has not seen the key sends instead.

Each figure is the median over ``--rounds`` rounds of ``--n`` operations each, after a
warm-up. Within a round, floor and ours take turns in batches of ``--batch``, so that
load from other processes falls on both. The script creates its own scratch database
(``--db-name``, default ``onceonly_bench``) on each server and drops it at the end.

To add a store, write a function returning a :class:`Subject` (its operations, each a
floor and an ours function, and a teardown) and list it in ``SUBJECTS``; a store that
needs more settings (a cache for Redis) adds them in ``configure``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import django
from django.conf import settings

RESULT = {"message_id": "bench-0001", "accepted": True}
DUPLICATE_KEYS = 100  # existing keys the duplicate checks cycle through
# The ratio each targeted operation must stay under (issue 12), by database and operation.
TARGETS = {
    ("postgres", "claim+complete"): 1.5,
    ("postgres", "duplicate check"): 1.3,
    ("redis", "claim+complete"): 1.3,
    ("redis", "duplicate check"): 1.3,
}

REDIS_URL = os.environ.get("ONCEONLY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
REDIS_CACHE = "onceonly_bench"

RunOps = Callable[[int], None]  # runs n operations


@dataclass
class Operation:
    """One thing to measure: the raw-SQL floor and our API doing the same job."""

    name: str
    floor: RunOps
    ours: RunOps
    targeted: bool = True  # False for rows that only show where the time goes


@dataclass
class Subject:
    """A store on one server, ready to measure."""

    name: str
    operations: list[Operation]
    teardown: Callable[[], None]
    describe: str = ""  # server and driver versions, for the report


@dataclass
class Row:
    database: str
    operation: str
    floor_us: float
    ours_us: float
    target: float | None
    floor_rounds: list[float] = field(default_factory=list)
    ours_rounds: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ours_us / self.floor_us


# -- Django ------------------------------------------------------------------------------

_SQLITE_DIR = ""  # made by configure(), removed at the end of main()


def database_settings(name: str, db_name: str) -> dict[str, Any]:
    """The Django ``DATABASES`` entry for ``name``; ``TEST.NAME`` is the scratch database."""
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
            "NAME": os.path.join(_SQLITE_DIR, "default.sqlite3"),
            "TEST": {"NAME": os.path.join(_SQLITE_DIR, f"{db_name}.sqlite3")},
        }
    raise ValueError(f"unknown database {name!r}")


def configure(databases: list[str], db_name: str) -> None:
    global _SQLITE_DIR
    _SQLITE_DIR = tempfile.mkdtemp(prefix="onceonly-bench-")
    config = {name: database_settings(name, db_name) for name in databases}
    config["default"] = database_settings("sqlite", db_name) | {
        "TEST": {"NAME": os.path.join(_SQLITE_DIR, "default_test.sqlite3")}
    }
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_onceonly"],
        DATABASES=config,
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            REDIS_CACHE: {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": REDIS_URL,
                "KEY_PREFIX": f"onceonly-bench-{_run}",
            },
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()


def create_scratch_database(alias: str) -> Callable[[], None]:
    """Create the scratch database with the real migrations; return what drops it."""
    from django.db import connections

    connection = connections[alias]
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)

    def drop() -> None:
        connection.creation.destroy_test_db(old_name, verbosity=0)

    return drop


def create_floor_table(alias: str) -> str:
    """Create a table with the same columns, constraint and indexes as the records'."""
    from django.apps.registry import Apps
    from django.db import connections, models

    from django_onceonly.models import IdempotencyRecord

    meta = IdempotencyRecord._meta
    table = "onceonly_bench_floor"

    def renamed(name: str) -> str:
        return name.replace("onceonly_", "bfloor_")

    class Meta:
        app_label = "onceonly_bench"
        apps = Apps()  # a registry of its own: one such model per database, never global
        db_table = table
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="bfloor_scope_key_uniq")
        ]
        indexes = [
            models.Index(fields=index.fields, name=renamed(index.name)) for index in meta.indexes
        ]

    attrs: dict[str, Any] = {"__module__": __name__, "Meta": Meta}
    for model_field in meta.local_fields:
        attrs[model_field.name] = model_field.clone()
    model = type("BenchFloor", (models.Model,), attrs)
    with connections[alias].schema_editor() as editor:
        editor.create_model(model)
    return table


# -- the operations ----------------------------------------------------------------------

_keys = itertools.count()
_run = uuid.uuid4().hex[:8]


def new_key() -> str:
    return f"bench-{_run}-{next(_keys)}"


class FloorSQL:
    """The cheapest autocommit statements that claim, complete and check a key.

    Columns and values go by name (the model's fields), never by position.
    """

    def __init__(self, alias: str, table: str, existing: int = DUPLICATE_KEYS) -> None:
        from django.db import connections

        from django_onceonly.models import IdempotencyRecord

        self.connection = connections[alias]
        conn = self.connection
        q = conn.ops.quote_name
        json_param = "CAST(%s AS jsonb)" if conn.vendor == "postgresql" else "%s"
        # What a new claim writes into each column: a parameter, or a constant.
        inserted = {
            "scope": "%s",
            "key": "%s",
            "status": "'in_progress'",
            "owner_token": "%s",
            "metadata": json_param,
            "created_at": "%s",
            "updated_at": "%s",
            "lease_expires_at": "%s",
        }
        self.parameters = [name for name, value in inserted.items() if "%s" in value]
        for model_field in IdempotencyRecord._meta.local_fields:
            if model_field.name not in inserted and not model_field.primary_key:
                # The other columns as a claim leaves them: empty text, 0, or NULL.
                default = {"CharField": "''", "TextField": "''"}.get(
                    model_field.get_internal_type(),
                    "0" if model_field.name == "duplicates_blocked" else "NULL",
                )
                inserted[model_field.name] = default
        columns = ", ".join(q(name) for name in inserted)
        values = f"({', '.join(inserted.values())})"
        if conn.vendor == "mysql":
            self.insert = f"INSERT IGNORE INTO {q(table)} ({columns}) VALUES {values}"
        else:
            self.insert = (
                f"INSERT INTO {q(table)} ({columns}) VALUES {values} "
                f"ON CONFLICT ({q('scope')}, {q('key')}) DO NOTHING"
            )
        self.update = (
            f"UPDATE {q(table)} SET {q('status')} = 'completed', {q('result')} = {json_param}, "
            f"{q('updated_at')} = %s, {q('completed_at')} = %s, {q('lease_expires_at')} = NULL, "
            f"{q('expires_at')} = %s WHERE {q('scope')} = %s AND {q('key')} = %s"
        )
        self.result = json.dumps(RESULT)
        self.existing = [new_key() for _ in range(existing)]
        for key in self.existing:
            self.claim(key)

    def claim(self, key: str) -> bool:
        """Insert the claim's row unless ``key`` has one; return whether this inserted it."""
        from django.utils import timezone

        adapt = self.connection.ops.adapt_datetimefield_value
        now = adapt(timezone.now())
        by_name = {
            "scope": "",
            "key": key,
            "owner_token": secrets.token_hex(16),
            "metadata": "{}",
            "created_at": now,
            "updated_at": now,
            "lease_expires_at": adapt(timezone.now() + dt.timedelta(seconds=300)),
        }
        with self.connection.cursor() as cursor:
            cursor.execute(self.insert, [by_name[name] for name in self.parameters])
            return bool(cursor.rowcount == 1)

    def claim_complete(self, n: int) -> None:
        from django.utils import timezone

        adapt = self.connection.ops.adapt_datetimefield_value
        for _ in range(n):
            key = new_key()
            self.claim(key)
            now = timezone.now()
            with self.connection.cursor() as cursor:
                cursor.execute(
                    self.update,
                    [
                        self.result,
                        adapt(now),
                        adapt(now),
                        adapt(now + dt.timedelta(days=1)),
                        "",
                        key,
                    ],
                )

    def duplicate(self, n: int) -> None:
        keys = self.existing
        for i in range(n):
            self.claim(keys[i % DUPLICATE_KEYS])


class Ours:
    """``check_lock`` and ``Lock.complete`` through the configured ``DatabaseStore``."""

    def __init__(self) -> None:
        from django_onceonly import check_lock

        self.check_lock = check_lock
        self.existing = [new_key() for _ in range(DUPLICATE_KEYS)]
        for key in self.existing:
            check_lock(key).complete(RESULT)

    def claim_complete(self, n: int) -> None:
        check_lock = self.check_lock
        for _ in range(n):
            lock = check_lock(new_key())
            lock.complete(RESULT)

    def duplicate(self, n: int) -> None:
        check_lock = self.check_lock
        keys = self.existing
        for i in range(n):
            lock = check_lock(keys[i % DUPLICATE_KEYS])
            assert lock.duplicate


class ClaimStatementOnly:
    """The store's claim statement alone, on an existing key: no Python of ours around it.

    The statement and its parameters come from the store itself
    (``DatabaseStore.statements`` and ``claim_values``), so they cannot drift from it.
    """

    def __init__(self, alias: str, keys: list[str]) -> None:
        from django.db import connections

        from django_onceonly.stores import DatabaseStore

        self.connection = connections[alias]
        self.store = DatabaseStore(alias)
        statements = self.store.statements(self.connection)
        self.keys = keys
        # What the store sends for a duplicate in autocommit: the read that comes first.
        self.statement = statements.select

    def duplicate(self, n: int) -> None:
        from django.utils import timezone

        from django_onceonly.stores.base import ClaimRequest

        statement, conn = self.statement, self.connection
        for i in range(n):
            now = timezone.now()
            request = ClaimRequest(
                scope="",
                key=self.keys[i % DUPLICATE_KEYS],
                token=secrets.token_hex(16),
                now=now,
                lease_expires_at=now + dt.timedelta(seconds=300),
                after_lease="reclaim",
            )
            params = statement.params(self.store.claim_values(conn, request))
            with conn.cursor() as cursor:
                cursor.execute(statement.sql, params)
                cursor.fetchone()


def database_subject(name: str) -> Subject:
    """``DatabaseStore`` on the database ``name`` (an alias of ``DATABASES``)."""
    from django.db import connections

    drop = create_scratch_database(name)
    connection = connections[name]

    def teardown() -> None:
        from django_onceonly.stores import duplicates

        duplicates.flush()  # the duplicate counts still buffered, before the database goes
        connection.close()
        drop()

    try:
        settings.ONCEONLY_STORE = "django_onceonly.stores.DatabaseStore"
        settings.ONCEONLY_DATABASE = name
        floor = FloorSQL(name, create_floor_table(name))
        ours = Ours()
        statement = ClaimStatementOnly(name, ours.existing)
        describe = f"{name}: {describe_server(connection)}"
    except BaseException:
        teardown()
        raise

    return Subject(
        name=name,
        operations=[
            Operation("claim+complete", floor.claim_complete, ours.claim_complete),
            Operation("duplicate check", floor.duplicate, ours.duplicate),
            # Where the time goes: the same duplicate check as the store's SQL alone.
            Operation("duplicate: claim SQL only", floor.duplicate, statement.duplicate, False),
        ],
        teardown=teardown,
        describe=describe,
    )


def describe_server(connection: Any) -> str:
    """Server version, driver, and the durability settings that decide a commit's cost."""
    queries = {
        "postgresql": (
            "SELECT version(), current_setting('fsync'), current_setting('synchronous_commit')",
            "fsync={1}, synchronous_commit={2}",
        ),
        "mysql": (
            "SELECT version(), @@innodb_flush_log_at_trx_commit, @@log_bin",
            "innodb_flush_log_at_trx_commit={1}, log_bin={2}",
        ),
        "sqlite": ("SELECT sqlite_version(), 0, 0", ""),
    }
    query, settings_text = queries[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(query)
        values = cursor.fetchone()
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA journal_mode")
            journal = cursor.fetchone()[0]
            cursor.execute("PRAGMA synchronous")
            settings_text = f"journal_mode={journal}, synchronous={cursor.fetchone()[0]}"
    version = str(values[0]).split(" on ")[0]
    package = {"postgresql": "psycopg", "mysql": "mysqlclient"}.get(connection.vendor)
    driver = f"{package} {metadata.version(package)}" if package else "sqlite3 (stdlib)"
    return f"{version}, {driver}; {settings_text.format(*values)}"


# -- Redis -------------------------------------------------------------------------------
# The cache RedisStore uses is declared in configure().


class FloorRedis:
    """Raw redis-py commands on the store's own connection: ``SET NX`` claims, ``SET`` completes."""

    def __init__(self, conn: Any, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self.result = json.dumps(RESULT)
        self.existing = [self.name(new_key()) for _ in range(DUPLICATE_KEYS)]
        for name in self.existing:
            conn.set(name, secrets.token_hex(16), nx=True, px=300_000)

    def name(self, key: str) -> str:
        return f"{self.prefix}:floor:{key}"

    def claim_complete(self, n: int) -> None:
        conn = self.conn
        for _ in range(n):
            name = self.name(new_key())
            conn.set(name, secrets.token_hex(16), nx=True, px=300_000)
            conn.set(name, self.result, px=86_400_000)

    def duplicate(self, n: int) -> None:
        conn = self.conn
        keys = self.existing
        for i in range(n):
            conn.set(keys[i % DUPLICATE_KEYS], secrets.token_hex(16), nx=True, px=300_000)


class RedisLayers:
    """The duplicate check below ``check_lock``: the store alone, its read alone, its script alone.

    The script's keys and arguments come from the store (``RedisStore.claim_call``), so
    they cannot drift from what it sends.
    """

    def __init__(self, conn: Any, keys: list[str]) -> None:
        from django.utils import timezone

        from django_onceonly.stores import RedisStore, get_store
        from django_onceonly.stores.base import ClaimRequest
        from django_onceonly.stores.redis_scripts import CLAIM, FIELDS

        self.conn = conn
        store = get_store()
        assert isinstance(store, RedisStore)
        self.store = store
        self.timezone = timezone
        self.keys = keys
        self.sha = CLAIM.sha
        self.fields = FIELDS
        self.records = [store.keys("", key).record for key in keys]
        now = timezone.now()
        self.calls = []
        for key in keys:
            request = ClaimRequest(
                scope="",
                key=key,
                token=secrets.token_hex(16),
                now=now,
                lease_expires_at=now + dt.timedelta(seconds=300),
                after_lease="reclaim",
            )
            script_keys, args = store.claim_call(request)
            self.calls.append([len(script_keys), *script_keys, *args])

    def store_claim(self, n: int) -> None:
        from django_onceonly.stores.base import ClaimRequest

        for i in range(n):
            now = self.timezone.now()
            outcome = self.store.claim(
                ClaimRequest(
                    scope="",
                    key=self.keys[i % DUPLICATE_KEYS],
                    token=secrets.token_hex(16),
                    now=now,
                    lease_expires_at=now + dt.timedelta(seconds=300),
                    after_lease="reclaim",
                )
            )
            assert not outcome.acquired

    def read_only(self, n: int) -> None:
        conn, fields, records = self.conn, self.fields, self.records
        for i in range(n):
            conn.hmget(records[i % DUPLICATE_KEYS], fields)

    def script_only(self, n: int) -> None:
        conn, sha, calls = self.conn, self.sha, self.calls
        for i in range(n):
            conn.evalsha(sha, *calls[i % DUPLICATE_KEYS])


def redis_subject() -> Subject:
    """``RedisStore`` on ``ONCEONLY_BENCH_REDIS_URL`` (keys under a prefix of this run)."""
    from django_redis import get_redis_connection

    prefix = settings.CACHES[REDIS_CACHE]["KEY_PREFIX"]
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = REDIS_CACHE
    conn = get_redis_connection(REDIS_CACHE)
    floor = FloorRedis(conn, prefix)
    ours = Ours()
    version = conn.info("server")["redis_version"]
    layers = RedisLayers(conn, ours.existing)

    def teardown() -> None:
        from django_onceonly.stores import duplicates

        duplicates.flush()  # the duplicate counts still buffered, before their records go
        names = list(conn.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(names), 1000):
            conn.unlink(*names[start : start + 1000])

    return Subject(
        name="redis",
        operations=[
            Operation("claim+complete", floor.claim_complete, ours.claim_complete),
            Operation("duplicate check", floor.duplicate, ours.duplicate),
            # Where the time goes: the same duplicate check without check_lock (the
            # store's claim), and without the store's Python (the read it sends for a key
            # seen taken, alone; the script a process that has not seen it sends, alone).
            Operation("duplicate: store.claim only", floor.duplicate, layers.store_claim, False),
            Operation("duplicate: HMGET only", floor.duplicate, layers.read_only, False),
            Operation("duplicate: EVALSHA only", floor.duplicate, layers.script_only, False),
        ],
        teardown=teardown,
        describe=(
            f"redis: {version}, redis-py {metadata.version('redis')}, "
            f"django-redis {metadata.version('django-redis')}"
        ),
    )


DATABASE_NAMES = ("postgres", "mariadb", "sqlite")
# Every store the benchmark knows: name -> function that prepares it.
SUBJECTS: dict[str, Callable[[], Subject]] = {
    "postgres": lambda: database_subject("postgres"),
    "mariadb": lambda: database_subject("mariadb"),
    "sqlite": lambda: database_subject("sqlite"),
    "redis": redis_subject,
}


# -- measuring ---------------------------------------------------------------------------


def timed_pair(floor: RunOps, ours: RunOps, n: int, batch: int) -> tuple[float, float]:
    """Microseconds per operation of ``floor`` and of ``ours``, ``n`` operations each.

    They run in alternating batches, so a burst of load from other processes falls on
    both rather than on whichever happened to be running.
    """
    spent = [0.0, 0.0]
    done = 0
    gc.collect()
    gc.disable()
    try:
        while done < n:
            size = min(batch, n - done)
            for side, run in enumerate((floor, ours)):
                start = time.perf_counter()
                run(size)
                spent[side] += time.perf_counter() - start
            done += size
    finally:
        gc.enable()
    return spent[0] / n * 1e6, spent[1] / n * 1e6


def measure(subject: Subject, n: int, rounds: int, batch: int) -> list[Row]:
    rows = []
    for operation in subject.operations:
        # Warm-up: connections, caches, the server's buffers and plans.
        timed_pair(operation.floor, operation.ours, max(n // 4, 1), batch)
        floor_rounds, ours_rounds = [], []
        for _ in range(rounds):
            floor_us, ours_us = timed_pair(operation.floor, operation.ours, n, batch)
            floor_rounds.append(floor_us)
            ours_rounds.append(ours_us)
        rows.append(
            Row(
                database=subject.name,
                operation=operation.name,
                floor_us=statistics.median(floor_rounds),
                ours_us=statistics.median(ours_rounds),
                target=TARGETS.get((subject.name, operation.name)) if operation.targeted else None,
                floor_rounds=floor_rounds,
                ours_rounds=ours_rounds,
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| database | operation | floor µs/op | ours µs/op | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        target = f"≤ {row.target}" if row.target else "-"
        if row.target and row.ratio > row.target:
            target += " MISSED"
        lines.append(
            f"| {row.database} | {row.operation} | {row.floor_us:.0f} | {row.ours_us:.0f} "
            f"| {row.ratio:.2f} | {target} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (median)")
    parser.add_argument(
        "--batch", type=int, default=50, help="operations per turn when alternating floor/ours"
    )
    parser.add_argument(
        "--databases",
        default="postgres,mariadb,sqlite,redis",
        help=f"comma-separated, from: {', '.join(SUBJECTS)}",
    )
    parser.add_argument("--db-name", default="onceonly_bench", help="scratch database name")
    parser.add_argument(
        "--rounds-detail", action="store_true", help="also print every round's figures"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a ratio misses its target"
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.databases.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUBJECTS]
    if unknown:
        parser.error(f"unknown database(s): {', '.join(unknown)}")
    rows: list[Row] = []
    described = []
    try:
        configure([name for name in names if name in DATABASE_NAMES], args.db_name)
        for name in names:
            subject = SUBJECTS[name]()
            try:
                described.append(subject.describe)
                rows.extend(measure(subject, args.n, args.rounds, args.batch))
            finally:
                subject.teardown()
    finally:
        shutil.rmtree(_SQLITE_DIR, ignore_errors=True)

    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Django {django.get_version()}; "
        f"n={args.n}, median of {args.rounds} rounds"
    )
    for line in described:
        print(f"  {line}")
    print()
    print(table(rows))
    if args.rounds_detail:
        for row in rows:
            print(
                f"\n{row.database} {row.operation}\n  floor: "
                + " ".join(f"{value:.0f}" for value in row.floor_rounds)
                + "\n  ours:  "
                + " ".join(f"{value:.0f}" for value in row.ours_rounds)
            )
    missed = [row for row in rows if row.target and row.ratio > row.target]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
