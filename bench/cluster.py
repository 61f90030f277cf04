"""RedisStore throughput on a Redis Cluster with 1 master and with 3 masters.

    .venv/bin/python bench/cluster.py [--processes 4] [--seconds 5] [--rounds 3] [--dir D]

Starts its own clusters with the test harness (``tests/redis_cluster.py``: redis-servers
on free loopback ports, no persistence, no replicas), one of 1 master and one of 3,
then runs ``--processes`` load processes against each in turn (``--rounds`` times,
alternating), every process claiming and completing new keys (``check_lock`` +
``complete``, through ``ClusterClient``) for ``--seconds``. Prints claims per second for
each cluster (the median round) and the ratio 3 masters / 1 master, with the CPU share
of the busiest master during the load (``INFO cpu``) and, from the two, the rate at
which that master would be fully busy (arithmetic, not a measurement).

``RedisStore`` has no cross-key coordination (every script touches one slot), so the
ratio is bounded by the masters only when the load generator is not the bottleneck.
On a machine with few cores the load processes and the redis-servers share them, and
the measured ratio says more about the machine than about the store: the table prints
the core count and how busy the masters were, and says when the single master was not
saturated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from tests.redis_cluster import OwnCluster


def worker(location: str, seconds: float, start_at: float, label: str) -> None:
    """One load process: claim and complete new keys from ``start_at`` for ``seconds``."""
    import django
    from django.conf import settings

    settings.configure(
        USE_TZ=True,
        INSTALLED_APPS=["django_onceonly"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": location,
                "OPTIONS": {"CLIENT_CLASS": "django_onceonly.stores.redis_cluster.ClusterClient"},
            }
        },
        ONCEONLY_STORE="django_onceonly.stores.RedisStore",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django_onceonly import check_lock

    check_lock(f"{label}-warmup").complete("ok")  # connects and loads the scripts
    time.sleep(max(0.0, start_at - time.time()))
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        check_lock(f"{label}-{done}").complete({"n": done})
        done += 1
    print(done)


def cpu_seconds(cluster: OwnCluster) -> list[float]:
    """CPU time each master's redis-server has used so far (``INFO cpu``)."""
    used = []
    for node in cluster.master_nodes():
        info = node.client().info("cpu")
        used.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return used


def measure(cluster: OwnCluster, processes: int, seconds: float) -> tuple[float, float]:
    """Claims (each completed) per second of ``processes`` load processes together, and
    the busiest master's share of one core meanwhile (1.0: a core fully busy)."""
    start_at = time.time() + 1.5  # every process started and connected by then
    run = uuid.uuid4().hex[:8]
    location = cluster.location
    command = [sys.executable, __file__, "--worker", location, str(seconds), str(start_at)]
    workers = [
        subprocess.Popen(
            [*command, f"bench-{run}-{n}"], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for n in range(processes)
    ]
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = cpu_seconds(cluster)
    time.sleep(seconds)
    cpu_after = cpu_seconds(cluster)
    total = 0
    for process in workers:
        out, _ = process.communicate(timeout=seconds + 60)
        if process.returncode != 0:
            raise RuntimeError(f"a load process failed ({process.returncode})")
        total += int(out.split()[-1])
    busiest = max(after - before for before, after in zip(cpu_before, cpu_after, strict=True))
    return total / seconds, busiest / seconds


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=4, help="load processes")
    parser.add_argument("--seconds", type=float, default=5, help="of load per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="for the redis-servers (default: a temporary one)")
    args = parser.parse_args()

    from tests.redis_cluster import OwnCluster

    with tempfile.TemporaryDirectory(prefix="onceonly-bench-cluster-", dir=args.dir) as tmp:
        clusters = {
            masters: OwnCluster(Path(tmp) / f"masters-{masters}", masters=masters, replicas=0)
            for masters in (1, 3)
        }
        try:
            for cluster in clusters.values():
                cluster.start()
            figures: dict[int, list[float]] = {masters: [] for masters in clusters}
            busiest: dict[int, list[float]] = {masters: [] for masters in clusters}
            for _ in range(args.rounds):
                for masters, cluster in clusters.items():
                    rate, cpu = measure(cluster, args.processes, args.seconds)
                    figures[masters].append(rate)
                    busiest[masters].append(cpu)
        finally:
            for cluster in clusters.values():
                cluster.stop()

    medians = {masters: statistics.median(rates) for masters, rates in figures.items()}
    print(
        f"RedisStore on Redis Cluster: {args.processes} load processes, check_lock + complete "
        f"on new keys, {args.rounds} round(s) of {args.seconds:g} s, median; "
        f"{os.cpu_count()} CPU core(s) shared by the load and the servers"
    )
    print()
    # Where the busiest master would reach a full core at the same mix: arithmetic from
    # the measured rate and CPU share, not a measurement.
    ceilings = {
        masters: medians[masters] / max(statistics.median(busiest[masters]), 1e-9)
        for masters in clusters
    }
    print(
        "| cluster | claims/s (median) | rounds | busiest master, CPU % of a core "
        "| claims/s at which it would be 100% busy |"
    )
    print("|---|---:|---|---:|---:|")
    for masters, rates in figures.items():
        label = "1 master" if masters == 1 else f"{masters} masters"
        rounds = ", ".join(f"{rate:,.0f}" for rate in rates)
        cpu = statistics.median(busiest[masters]) * 100
        print(
            f"| {label} | {medians[masters]:,.0f} | {rounds} | {cpu:.0f} "
            f"| {ceilings[masters]:,.0f} |"
        )
    print()
    print(f"ratio 3/1: {medians[3] / medians[1]:.2f}")
    print(f"ratio 3/1 of the server-side ceilings: {ceilings[3] / ceilings[1]:.2f}")
    if statistics.median(busiest[1]) < 0.8:
        print(
            "The single master was not saturated (under 80% of a core): the load processes "
            "were the bottleneck, so this ratio does not measure the masters."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
