"""Claims under contention: several processes claiming one hot key, and many distinct keys.

    .venv/bin/python bench/contention.py [--procs 8] [--claims 1000] [--keys 10000] \
        [--stores postgres,mariadb,redis] [--rounds 3]

Per store (``DatabaseStore`` on PostgreSQL and on MariaDB, ``RedisStore``), ``--procs``
processes (forked, each with its own connection) wait at a barrier, then each makes
``--claims`` claims as fast as it can:

- ``hot``: every claim is on one key (one key per row and round);
- ``distinct``: each claim is on a key drawn at random from ``--keys`` keys (a new set
  per row and round; each process its own random sequence, so some keys are claimed by
  several processes, at moments of their own).

Each mode has two rows, measured in the same rounds, in turns:

- ``ours``: ``check_lock(key, lease=300)`` (a claim; nobody completes; ``--lease``
  changes the lease: one shorter than a round lets a later claim take over a key whose
  lease ended, a second ``locked`` answer the check reports, as it should);
- ``floor``: the cheapest statement that claims a key with the same processes:
  ``INSERT ... ON CONFLICT DO NOTHING`` (MariaDB: ``INSERT IGNORE``) of the claim's
  row into a table with the records' columns and indexes (``bench/claims.py``'s
  ``FloorSQL``), and ``SET NX PX`` on the store's Redis.

A row's throughput is all its claims over the time from the first process's start to
the last one's end, the median over ``--rounds`` rounds. Each process reports the keys
it was answered ``locked`` on (inserted, for the floors). The script checks that every
key claimed in the round got **exactly one** ``locked`` answer, prints the counts, and
exits 1 if any key got none or more than one (``ours`` and the floors alike).

Scratch databases (``--db-name``, default ``onceonly_contention``) are created with the
real migrations on each server and dropped at the end; Redis keys live under a prefix
of this run (database 14 of ``ONCEONLY_BENCH_REDIS_URL``) and are deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import platform
import random
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from django.conf import settings

from bench import claims

STORES = ("postgres", "mariadb", "redis")
MODES = ("hot", "distinct")
KINDS = ("ours", "floor")


@dataclass
class Row:
    store: str
    mode: str
    kind: str
    rates: list[float] = field(default_factory=list)  # claims/s, one per round
    locked: list[int] = field(default_factory=list)  # locked answers, one per round
    keys: list[int] = field(default_factory=list)  # distinct keys claimed, one per round
    wrong: list[str] = field(default_factory=list)  # keys with zero or several "locked"

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


Claim = Callable[[str], bool]  # claims a key; True when this caller got it


def claimer(store: str, kind: str, prefix: str) -> Claim:
    """Made in each process after the fork: its own connections."""
    if kind == "ours":
        from django_onceonly import check_lock

        return lambda key: check_lock(key, lease=LEASE[0]).locked
    if store == "redis":
        from django_redis import get_redis_connection

        conn = get_redis_connection(claims.REDIS_CACHE)
        return lambda key: bool(
            conn.set(f"{prefix}:floor:{key}", secrets.token_hex(16), nx=True, px=300_000)
        )
    return claims.FloorSQL(store, FLOOR_TABLES[store], existing=0).claim


FLOOR_TABLES: dict[str, str] = {}  # store -> its floor table, made before the forks
LEASE = [300.0]  # seconds, ours only (--lease)


def worker(
    store: str,
    kind: str,
    keys: list[str],
    seed: int,
    claims_n: int,
    prefix: str,
    barrier: Any,
    out: Any,
) -> None:
    from django.db import connections

    claim = claimer(store, kind, prefix)
    chosen = chosen_keys(keys, seed, claims_n)
    claim(f"warm-{prefix}-{seed}-{kind}")  # connect (and load the store) before the clock
    barrier.wait()
    started = time.time()
    won = [key for key in chosen if claim(key)]
    ended = time.time()
    connections.close_all()
    out.put((started, ended, won))


def run_round(row: Row, procs: int, claims_n: int, n_keys: int, round_no: int) -> None:
    prefix = settings.CACHES[claims.REDIS_CACHE]["KEY_PREFIX"]
    tag = f"{row.store}-{row.mode}-{row.kind}-{round_no}-{claims._run}"
    count = 1 if row.mode == "hot" else n_keys
    keys = [f"{tag}-{i}" for i in range(count)]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(procs)
    out = context.Queue()
    from django.db import connections

    connections.close_all()  # no child may inherit the parent's connection
    processes = [
        context.Process(
            target=worker,
            args=(row.store, row.kind, keys, round_no * 1000 + p, claims_n, prefix, barrier, out),
        )
        for p in range(procs)
    ]
    for process in processes:
        process.start()
    results = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise RuntimeError(f"a {row.kind} process of {row.store} exited {process.exitcode}")
    started = min(result[0] for result in results)
    ended = max(result[1] for result in results)
    won = Counter(key for result in results for key in result[2])
    claimed = {
        key for seed in range(procs) for key in chosen_keys(keys, round_no * 1000 + seed, claims_n)
    }
    row.rates.append(procs * claims_n / (ended - started))
    row.locked.append(sum(won.values()))
    row.keys.append(len(claimed))
    row.wrong += [key for key in claimed if won[key] != 1]
    row.wrong += [key for key in won if key not in claimed]


def chosen_keys(keys: list[str], seed: int, claims_n: int) -> list[str]:
    """The keys a worker with ``seed`` claims, in order (the parent draws them again)."""
    rng = random.Random(seed)
    return [keys[0] if len(keys) == 1 else rng.choice(keys) for _ in range(claims_n)]


def prepare(store: str) -> Callable[[], None]:
    """Point the settings at ``store``; return its teardown."""
    from django.db import connections

    if store == "redis":
        from django_redis import get_redis_connection

        settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
        settings.ONCEONLY_REDIS_CACHE = claims.REDIS_CACHE
        prefix = settings.CACHES[claims.REDIS_CACHE]["KEY_PREFIX"]

        def delete_keys() -> None:
            conn = get_redis_connection(claims.REDIS_CACHE)
            names = list(conn.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(names), 1000):
                conn.unlink(*names[start : start + 1000])

        return delete_keys
    drop = claims.create_scratch_database(store)
    try:
        FLOOR_TABLES[store] = claims.create_floor_table(store)
    except BaseException:
        drop()
        raise
    settings.ONCEONLY_STORE = "django_onceonly.stores.DatabaseStore"
    settings.ONCEONLY_DATABASE = store

    def teardown() -> None:
        connections[store].close()
        drop()

    return teardown


def describe(store: str) -> str:
    if store == "redis":
        from django_redis import get_redis_connection

        return f"redis {get_redis_connection(claims.REDIS_CACHE).info('server')['redis_version']}"
    from django.db import connections

    return f"{store}: {claims.describe_server(connections[store])}"


def table(rows: list[Row]) -> str:
    lines = [
        "| store | keys | row | claims/s | x floor | locked answers | keys claimed "
        "| one locked per key | rounds (claims/s) |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    by = {(row.store, row.mode, row.kind): row for row in rows}
    for row in rows:
        floor = by[(row.store, row.mode, "floor")]
        keys = "1 hot key" if row.mode == "hot" else "distinct"
        lines.append(
            f"| {row.store} | {keys} | {row.kind} | {row.rate:,.0f} | {row.rate / floor.rate:.2f} "
            f"| {'/'.join(map(str, row.locked))} | {'/'.join(map(str, row.keys))} "
            f"| {'yes' if not row.wrong else f'NO ({len(row.wrong)} keys)'} "
            f"| {' '.join(f'{rate:,.0f}' for rate in row.rates)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=8, help="processes claiming at once")
    parser.add_argument("--claims", type=int, default=1000, help="claims per process")
    parser.add_argument("--keys", type=int, default=10_000, help="keys of the distinct mode")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per row (median)")
    parser.add_argument("--stores", default=",".join(STORES), help=f"from {', '.join(STORES)}")
    parser.add_argument("--db-name", default="onceonly_contention", help="scratch databases")
    parser.add_argument(
        "--lease", type=float, default=300.0, help="the claims' lease in seconds (ours only)"
    )
    args = parser.parse_args(argv)
    stores = [name.strip() for name in args.stores.split(",") if name.strip()]
    if set(stores) - set(STORES) or not stores:
        parser.error(f"--stores: from {', '.join(STORES)}")
    if min(args.procs, args.claims, args.keys, args.rounds) < 1:
        parser.error("--procs, --claims, --keys and --rounds must be at least 1")

    LEASE[0] = args.lease
    claims.configure([store for store in stores if store != "redis"], args.db_name)
    rows: list[Row] = []
    described = []
    started = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    try:
        for store in stores:
            teardown = prepare(store)
            try:
                described.append(describe(store))
                store_rows = [Row(store, mode, kind) for mode in MODES for kind in KINDS]
                for round_no in range(args.rounds):
                    for row in store_rows if round_no % 2 == 0 else reversed(store_rows):
                        run_round(row, args.procs, args.claims, args.keys, round_no)
                rows += store_rows
            finally:
                teardown()
    finally:
        import shutil

        shutil.rmtree(claims._SQLITE_DIR, ignore_errors=True)

    print(
        f"{started}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"Python {platform.python_version()}; {args.procs} processes x {args.claims} claims, "
        f"distinct keys drawn from {args.keys:,}, median of {args.rounds} rounds"
        + (f"; lease {args.lease:g} s" if args.lease != 300 else "")
    )
    for text in described:
        print(f"  {text}")
    print()
    print(table(rows))
    wrong = [row for row in rows if row.wrong]
    print()
    if wrong:
        for row in wrong:
            print(
                f"NOT exactly one locked answer per key: {row.store} {row.mode} {row.kind}, "
                f"{len(row.wrong)} keys, e.g. {row.wrong[:3]}"
            )
        return 1
    print("every key claimed got exactly one locked answer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
