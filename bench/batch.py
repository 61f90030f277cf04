"""What a key costs in ``check_locks`` at batch sizes 1, 10, 100 and 1,000, against single claims.

    .venv/bin/python bench/batch.py [--keys 2000] [--rounds 5] [--stores postgres,mariadb,sqlite,redis]

Per store, in one run: ``--keys`` new keys claimed with ``check_lock`` one by one (the
floor of this benchmark), and the same number of new keys claimed with ``check_locks``
in batches of each size. Single claims and each batch size take turns in every round, so
load from other processes falls on all of them; each figure is the median over
``--rounds``. The table gives microseconds per key and the ratio to single claims in
the same run (below 1 is cheaper). Django setup, scratch databases and the Redis prefix
come from ``bench/claims.py``; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import claims

SIZES = (1, 10, 100, 1000)


def per_key_micros(claim: str, keys: list[str], size: int) -> float:
    from django_onceonly import check_lock, check_locks

    gc.collect()
    started = time.perf_counter()
    if claim == "single":
        for key in keys:
            check_lock(key)
    else:
        for start in range(0, len(keys), size):
            check_locks(keys[start : start + size])
    return (time.perf_counter() - started) / len(keys) * 1e6


def measure(store: str, n: int, rounds: int) -> list[tuple[str, float, float]]:
    subject = claims.SUBJECTS[store]()  # points ONCEONLY_STORE at the store under test
    try:
        samples: dict[str, list[float]] = {"single": [], **{f"batch {s}": [] for s in SIZES}}
        warm = [f"warm-{uuid.uuid4().hex}" for _ in range(50)]
        per_key_micros("batch", warm, 10)
        for _ in range(rounds):
            for name in samples:
                keys = [f"bench-{uuid.uuid4().hex}" for _ in range(n)]
                size = 1 if name == "single" else int(name.split()[1])
                samples[name].append(per_key_micros(name.split()[0], keys, size))
        single = statistics.median(samples["single"])
        return [
            (name, statistics.median(values), statistics.median(values) / single)
            for name, values in samples.items()
        ]
    finally:
        subject.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=2000, help="new keys per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stores", default="postgres,redis,sqlite")
    parser.add_argument("--db-name", default="onceonly_bench_batch")
    args = parser.parse_args(argv)
    stores = [name for name in args.stores.split(",") if name]
    claims.configure([name for name in stores if name in claims.DATABASE_NAMES], args.db_name)
    try:
        print(f"{'store':<9} {'claims':<11} {'us/key':>9} {'vs single':>10}")
        for store in stores:
            for name, micros, ratio in measure(store, args.keys, args.rounds):
                print(f"{store:<9} {name:<11} {micros:>9.1f} {ratio:>10.2f}")
    finally:
        shutil.rmtree(claims._SQLITE_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
