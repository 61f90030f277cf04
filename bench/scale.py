"""Whether a claim costs more on a big table, and how fast the purge empties one (PostgreSQL).

    .venv/bin/python bench/scale.py [--small 10000] [--large 1000000] [--n 500] [--rounds 5] \
        [--batch-size 1000]

Two scratch databases on the PostgreSQL server of the benches (``ONCEONLY_BENCH_PG_HOST``
and friends, default 127.0.0.1:5432 as postgres; ``--db-name`` with ``_small`` and
``_large`` appended), each with the real migrations, are filled in SQL with
``--small`` and ``--large`` records (``bench/admin.py``'s ``INSERT ... SELECT ... FROM
generate_series``: the mix an operator meets, spread over 90 days), then ``VACUUM
ANALYZE``. Then:

1. **Claim cost.** ``check_lock`` + ``complete`` on new keys, and a duplicate check
   (``check_lock`` on a key completed before the round), through ``DatabaseStore`` on
   each database in turn: batches of ``--turn`` operations alternate between the two, so
   load from other processes falls on both. Each figure is the median over ``--rounds``
   rounds of ``--n`` operations; the ratio large / small should be near 1 (a claim is an
   index probe and an insert into B-trees whose depth grows with the log of the rows).
2. **Purge.** Every record of the large database is made expired (one ``UPDATE``, then
   ``VACUUM ANALYZE``, not timed), and ``django_onceonly.tasks.purge_expired`` (the task
   beat runs, ``--batch-size`` per batch) deletes them: records per second.

Both databases are dropped at the end (``--keep`` keeps them, and a later ``--keep`` run
reuses them when they hold the rows; the purge then runs on a copy of the large one, made
with ``CREATE DATABASE ... TEMPLATE``, so the kept one keeps its rows).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import os
import platform
import statistics
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import django
from django.conf import settings

from bench.admin import LOAD, TABLE, server_connection, vacuum_analyze

RESULT = {"message_id": "bench-0001", "accepted": True}
PG = {
    "ENGINE": "django.db.backends.postgresql",
    "USER": os.environ.get("ONCEONLY_BENCH_PG_USER", "postgres"),
    "PASSWORD": os.environ.get("ONCEONLY_BENCH_PG_PASSWORD", ""),
    "HOST": os.environ.get("ONCEONLY_BENCH_PG_HOST", "127.0.0.1"),
    "PORT": os.environ.get("ONCEONLY_BENCH_PG_PORT", "5432"),
}
SIZES = ("small", "large")
RATIO_TARGET = 1.25  # the large table's claim cost at most this times the small one's
_run = uuid.uuid4().hex[:8]
_keys = itertools.count()


def configure(db_name: str) -> None:
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_onceonly"],
        DATABASES={
            "default": PG | {"NAME": f"{db_name}_small"},
            **{size: PG | {"NAME": f"{db_name}_{size}"} for size in (*SIZES, "purge")},
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
        ONCEONLY_STORE="django_onceonly.stores.DatabaseStore",
    )
    django.setup()


def count(alias: str) -> int:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {TABLE}")
        return int(cursor.fetchone()[0])


def vacuum(alias: str) -> None:
    from django.db import connections

    vacuum_analyze(connections[alias])


def prepare(pg: Any, alias: str, rows: int, keep: bool) -> float | None:
    """Create (or reuse, with ``keep``) the database of ``alias`` with ``rows`` records.

    Returns the seconds the load took, ``None`` when the rows were reused.
    """
    from django.core.management import call_command
    from django.db import connections

    name = settings.DATABASES[alias]["NAME"]
    exists = pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    if exists and not keep:
        pg.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        exists = None
    if not exists:
        pg.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", database=alias, verbosity=0)
    if exists and count(alias) >= rows:
        return None
    started = time.perf_counter()
    with connections[alias].cursor() as cursor:
        cursor.execute(f"TRUNCATE {TABLE}")
        cursor.execute(LOAD, {"rows": rows})
    vacuum(alias)
    return time.perf_counter() - started


# -- the claims ------------------------------------------------------------------------------


def claim_complete(n: int) -> None:
    from django_onceonly import check_lock

    for _ in range(n):
        check_lock(f"scale-{_run}-{next(_keys)}").complete(RESULT)


class Duplicates:
    """Duplicate checks on keys completed before the rounds (one set per database)."""

    def __init__(self, n: int) -> None:
        from django_onceonly import check_lock

        self.keys = [f"scale-{_run}-dup-{i}" for i in range(min(n, 100))]
        for key in self.keys:
            check_lock(key).complete(RESULT)
        self.next = itertools.cycle(self.keys)

    def __call__(self, n: int) -> None:
        from django_onceonly import check_lock

        for _ in range(n):
            assert check_lock(next(self.next)).duplicate


def measure(n: int, rounds: int, turn: int) -> dict[tuple[str, str], list[float]]:
    """µs per operation, per (operation, size), one figure per round."""
    duplicates = {}
    for size in SIZES:
        settings.ONCEONLY_DATABASE = size
        duplicates[size] = Duplicates(n)
        claim_complete(min(n, 100))  # warm-up
    figures: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        spent = {(op, size): 0.0 for op in ("claim+complete", "duplicate") for size in SIZES}
        done = 0
        gc.collect()
        while done < n:
            batch = min(turn, n - done)
            for (op, size), _spent in spent.items():
                settings.ONCEONLY_DATABASE = size
                work = claim_complete if op == "claim+complete" else duplicates[size]
                started = time.perf_counter()
                work(batch)
                spent[(op, size)] += time.perf_counter() - started
            done += batch
        for name, seconds in spent.items():
            figures.setdefault(name, []).append(seconds / n * 1e6)
    return figures


# -- the purge -------------------------------------------------------------------------------


def purge(alias: str, batch_size: int) -> tuple[int, float]:
    """Expire every record of ``alias``, then purge them; (records deleted, seconds)."""
    from django.db import connections

    from django_onceonly.tasks import _purge_expired

    with connections[alias].cursor() as cursor:
        # Spread over the past day, as a real backlog is.
        cursor.execute(
            f"UPDATE {TABLE} SET expires_at = now() - interval '1 hour' "
            "- mod(id, 86400) * interval '1 second'"
        )
    vacuum(alias)
    settings.ONCEONLY_DATABASE = alias
    started = time.perf_counter()
    deleted = _purge_expired(batch_size=batch_size)
    return deleted, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000, help="records in the small table")
    parser.add_argument("--large", type=int, default=1_000_000, help="records in the large one")
    parser.add_argument("--n", type=int, default=500, help="operations per row per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median)")
    parser.add_argument("--turn", type=int, default=25, help="operations per turn")
    parser.add_argument("--batch-size", type=int, default=1000, help="the purge's batch size")
    parser.add_argument("--db-name", default="onceonly_scale", help="scratch database prefix")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the databases")
    parser.add_argument("--check", action="store_true", help=f"exit 1 above {RATIO_TARGET}")
    args = parser.parse_args(argv)
    if min(args.small, args.large, args.n, args.rounds, args.turn, args.batch_size) < 1:
        parser.error("every size must be at least 1")

    configure(args.db_name)
    from django.db import connections

    pg = server_connection(PG)
    names = [settings.DATABASES[size]["NAME"] for size in SIZES]
    purge_name = settings.DATABASES["purge"]["NAME"]
    started = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    try:
        loads = {
            size: prepare(pg, size, rows, args.keep)
            for size, rows in (("small", args.small), ("large", args.large))
        }
        figures = measure(args.n, args.rounds, args.turn)
        with connections["large"].cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
        purged_alias = "large"
        if args.keep:
            # Purge a copy: the kept database keeps its rows for the next run.
            connections.close_all()
            pg.execute(f'DROP DATABASE IF EXISTS "{purge_name}" WITH (FORCE)')
            pg.execute(f'CREATE DATABASE "{purge_name}" TEMPLATE "{names[1]}"')
            purged_alias = "purge"
        expired = count(purged_alias)
        deleted, purge_s = purge(purged_alias, args.batch_size)
    finally:
        connections.close_all()
        for name in ([] if args.keep else names) + [purge_name]:
            pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg.close()

    median = {name: statistics.median(values) for name, values in figures.items()}
    loaded = ", ".join(
        f"{size} {'reused' if seconds is None else f'loaded in {seconds:.1f} s'}"
        for size, seconds in loads.items()
    )
    print(
        f"{started}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"Python {platform.python_version()}, Django {django.get_version()}, "
        f"PostgreSQL {version}; n={args.n}, turns of {args.turn}, median of {args.rounds} "
        f"rounds; {loaded}"
    )
    print()
    print(
        f"| operation | µs/op, {args.small:,} records | µs/op, {args.large:,} records "
        "| large / small |"
    )
    print("|---|---:|---:|---:|")
    worst = 0.0
    for op in ("claim+complete", "duplicate"):
        small, large = median[(op, "small")], median[(op, "large")]
        worst = max(worst, large / small)
        print(f"| {op} | {small:,.0f} | {large:,.0f} | {large / small:.2f} |")
    print()
    print(
        f"purge: {deleted:,} of {expired:,} expired records deleted in {purge_s:.1f} s, "
        f"{deleted / purge_s:,.0f} records/s, batch size {args.batch_size:,}"
    )
    verdict = "meets" if worst <= RATIO_TARGET else "MISSES"
    print(f"claim cost large / small at most {worst:.2f}: {verdict} the target {RATIO_TARGET}")
    if deleted != expired:
        print("NOT every expired record was purged")
        return 1
    return 1 if args.check and worst > RATIO_TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
