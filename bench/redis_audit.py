"""What RedisStore's audit trail costs, and how fast the sync copies records.

    .venv/bin/python bench/redis_audit.py [--n 2000] [--rounds 7] [--sync 10000]
        [--databases sqlite,postgres]

Starts its own redis-server (no persistence, 127.0.0.1, a free port) so that the
server-side figures (``INFO commandstats``) are ours alone, then reports:

- per operation, the Redis CPU time of the script (µs per ``EVALSHA``) and the
  wall time of ``check_lock`` + ``complete`` and of a duplicate check, with the audit
  marks on (``RedisStore``) and off (``RedisStore`` subclass with ``audit = False``);
- the sync: records copied per second into each database (``sync_audit`` with the
  default batch of 1000), for ``--sync`` completed records.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import django
import redis
from django.conf import settings

RESULT = {"message_id": "bench-0001", "accepted": True}
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            directory,
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            os.path.join(directory, "log"),
        ]
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def configure(port: int, databases: list[str], scratch: str) -> None:
    from bench.claims import database_settings

    config = {name: database_settings(name, "onceonly_bench_audit") for name in databases}
    config["default"] = database_settings("sqlite", "onceonly_bench_audit")
    cache = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{port}/0",
    }
    settings.configure(
        USE_TZ=True,
        INSTALLED_APPS=["django_onceonly"],
        DATABASES=config,
        CACHES={"default": cache},
        ONCEONLY_STORE="django_onceonly.stores.RedisStore",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()


_keys = itertools.count()
_run = uuid.uuid4().hex[:8]


def new_key() -> str:
    return f"bench-{_run}-{next(_keys)}"


def timed(run: Any, n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    run(n)
    return (time.perf_counter() - start) / n * 1e6


def claim_complete(n: int) -> None:
    from django_onceonly import check_lock

    for _ in range(n):
        check_lock(new_key()).complete(RESULT)


def duplicates(keys: list[str]) -> Any:
    from django_onceonly import check_lock

    def run(n: int) -> None:
        for i in range(n):
            check_lock(keys[i % len(keys)])

    return run


def measure_marks(client: redis.Redis, n: int, rounds: int) -> list[str]:
    from django_onceonly import check_lock

    lines = [
        "| audit marks | claim+complete µs/op | duplicate µs/op | Redis CPU µs per EVALSHA |",
        "|---|---:|---:|---:|",
    ]
    figures: dict[str, dict[str, list[float]]] = {}
    stores = {
        "on": "django_onceonly.stores.RedisStore",
        "off": "bench.redis_audit.QuietRedisStore",
    }
    existing = {}
    for name, path in stores.items():
        settings.ONCEONLY_STORE = path
        keys = [new_key() for _ in range(100)]
        for key in keys:
            check_lock(key).complete(RESULT)
        existing[name] = keys
        timed(claim_complete, n // 4)
        figures[name] = {"cc": [], "dup": [], "cpu": []}
    for round_number in range(rounds):
        order = list(stores) if round_number % 2 == 0 else list(reversed(stores))
        for name in order:
            settings.ONCEONLY_STORE = stores[name]
            client.config_resetstat()
            figures[name]["cc"].append(timed(claim_complete, n))
            figures[name]["dup"].append(timed(duplicates(existing[name]), n))
            stats = client.info("commandstats")["cmdstat_evalsha"]
            figures[name]["cpu"].append(stats["usec"] / stats["calls"])
    for name in stores:
        med = {k: statistics.median(v) for k, v in figures[name].items()}
        lines.append(f"| {name} | {med['cc']:.0f} | {med['dup']:.0f} | {med['cpu']:.1f} |")
    settings.ONCEONLY_STORE = stores["on"]
    return lines


def measure_sync(records: int, databases: list[str]) -> list[str]:
    from django.db import connections

    from bench.claims import create_scratch_database
    from django_onceonly import check_lock
    from django_onceonly.stores.audit import sync_audit

    lines = ["| database | records | sync seconds | records/s |", "|---|---:|---:|---:|"]
    for alias in databases:
        drop = create_scratch_database(alias)
        try:
            sync_audit(using=alias)  # whatever earlier steps marked
            for _ in range(records):
                check_lock(new_key()).complete(RESULT)
            start = time.perf_counter()
            report = sync_audit(using=alias)
            seconds = time.perf_counter() - start
            assert report.copied == records, report
            lines.append(f"| {alias} | {records} | {seconds:.2f} | {records / seconds:.0f} |")
        finally:
            connections[alias].close()
            drop()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sync", type=int, default=10000, help="records the sync copies")
    parser.add_argument("--databases", default="sqlite,postgres")
    args = parser.parse_args()
    databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    directory = tempfile.mkdtemp(prefix="onceonly-bench-redis-")
    process, port = start_redis(directory)
    try:
        configure(port, [name for name in databases if name != "sqlite"] + ["sqlite"], directory)
        client = redis.Redis(port=port)
        print(f"redis-server {client.info('server')['redis_version']} (own, port {port})")
        print(f"n={args.n}, median of {args.rounds} rounds\n")
        print("\n".join(measure_marks(client, args.n, args.rounds)))
        print()
        print("\n".join(measure_sync(args.sync, databases)))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def _quiet_store() -> Any:
    from django_onceonly.stores.redis import RedisStore

    class QuietRedisStore(RedisStore):
        audit = False

    return QuietRedisStore


def __getattr__(name: str) -> Any:
    # The store class is made after django.setup(); import_string finds it here.
    if name == "QuietRedisStore":
        return _quiet_store()
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
