"""Chaos run: emails under worker kills and server restarts, reconciled Jepsen-style.

    .venv/bin/python bench/chaos.py [--store database,redis] [--after-lease hold,reclaim]
                                    [--intents 2000] [--kill-every 3]

For each store and ``ONCEONLY_AFTER_LEASE`` policy, in a fresh temporary directory:

1. its own servers: a redis-server (the Celery broker, and with ``RedisStore`` the
   store, database 1) with ``appendfsync always``; with ``DatabaseStore`` a PostgreSQL
   cluster of its own (``initdb`` + ``pg_ctl``); an SMTP server that keeps every message;
2. N intents, 30% of them published twice (shuffled), for ``chaos.send_email``
   (``bench/chaos_worker.py``: ``OnceTask``, ``acks_late``, a short visibility timeout);
3. two ``celery worker -P prefork -c 2`` processes; while they work, a worker child is
   SIGKILLed every few seconds, the redis-server is crashed (SIGKILL) and restarted once,
   and with ``DatabaseStore`` PostgreSQL is crashed (``-m immediate``) and restarted once;
4. when every intent has a final record, or nothing has changed for a while (or at the
   deadline), the workers stop and the
   run reconciles the SMTP server's mailbox with the records: each intent is
   ``delivered`` (once), ``duplicated`` (more than once: each is named with the pid that
   sent it first, killed before it could complete or refused by a store that was down
   when it completed; any other duplicate is ``unexplained``), ``review``
   (``unknown`` or ``failed``, shown in the admin; delivered or not), ``stuck`` (left
   ``in_progress``) or ``lost`` (never delivered and no record saying so).

The exit status is 1 when an intent is lost, when a duplicate appears with
``hold``, or when a duplicate with ``reclaim`` is not explained by a process killed
between its send and its completion. Deliveries per intent are written to
``deliveries-<store>-<policy>.csv`` in the run's directory (printed at the end).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_servers import CountingSMTP, OwnPostgres, OwnRedis  # noqa: E402

FINAL = ("completed", "failed", "unknown")


@dataclass
class Outcome:
    """The reconciled figures of one run."""

    store: str
    policy: str
    intents: int
    messages: int
    kills: int = 0
    redis_restarts: int = 0
    postgres_restarts: int = 0
    deliveries: int = 0
    delivered: int = 0
    duplicated: int = 0
    review: int = 0
    stuck: int = 0
    lost: int = 0
    unexplained: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        duplicates_allowed = self.policy == "reclaim"
        return (
            self.lost == 0
            and self.unexplained == 0
            and (duplicates_allowed or self.duplicated == 0)
        )


# -- one run (a child process: Django is configured once per process) --------------------


def worker_children(pid: int) -> list[int]:
    """The pool processes of a worker (children of its main process)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            # The command may contain spaces: fields start after the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return children


def start_worker(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "celery", "-A", "bench.chaos_worker", "worker",
        "-P", "prefork", "-c", "2",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-Q", env["CHAOS_QUEUE"], "-n", f"{name}@127.0.0.1", "--loglevel", "INFO",
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while " ready." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def run_one(args: argparse.Namespace, directory: Path) -> Outcome:
    store_name, policy = args.store, args.after_lease
    directory.mkdir(parents=True, exist_ok=True)
    redis_server = OwnRedis(directory / "redis")
    redis_server.start()
    postgres: OwnPostgres | None = None
    if store_name == "database":
        postgres = OwnPostgres()
        postgres.init()
        postgres.start()
    smtp = CountingSMTP(directory / "mail")
    smtp.start()
    journal = directory / "journal.log"
    env = {
        "CHAOS_STORE": store_name,
        "CHAOS_BROKER": redis_server.url(0),
        "CHAOS_REDIS_STORE": redis_server.url(1),
        "CHAOS_PG_PORT": str(postgres.port if postgres else 0),
        "CHAOS_AFTER_LEASE": policy,
        "CHAOS_LEASE": str(args.lease),
        "CHAOS_WORK": str(args.work),
        "CHAOS_VISIBILITY_TIMEOUT": str(args.visibility_timeout),
        "CHAOS_QUEUE": f"onceonly-chaos-{uuid.uuid4().hex[:8]}",
        "CHAOS_JOURNAL": str(journal),
        "CHAOS_SMTP_PORT": str(smtp.port),
    }
    os.environ.update(env)
    from django.core.management import call_command

    from bench import chaos_worker

    if postgres is not None:
        call_command("migrate", verbosity=0)
    from django_onceonly.exceptions import OnceOnlyError
    from django_onceonly.stores import get_store
    from django_onceonly.stores.database import close_connections

    rng = random.Random(args.seed)
    intents = [f"i{n:05d}" for n in range(args.intents)]
    twice = set(rng.sample(intents, round(len(intents) * args.duplicate_share)))
    messages = intents + sorted(twice)
    rng.shuffle(messages)
    outcome = Outcome(store_name, policy, len(intents), len(messages))
    with chaos_worker.app.producer_or_acquire() as producer:
        for intent in messages:
            chaos_worker.send_email.apply_async((intent,), producer=producer)

    started = time.monotonic()
    workers = []
    for n in range(2):
        log = directory / f"worker-{n}.log"
        workers.append((start_worker(f"chaos{n}-{os.getpid()}", env, log), log))
    for process, log in workers:
        wait_ready(process, log)

    killed: set[int] = set()
    store = get_store()

    def statuses() -> dict[str, str] | None:
        try:
            found = {}
            for intent in intents:
                record = store.get("", f"chaos-{intent}")
                found[intent] = record.status if record else "absent"
            return found
        except (OnceOnlyError, Exception):  # a server is down right now: ask again later
            close_connections()
            return None

    deadline = started + args.timeout
    next_kill = time.monotonic() + args.kill_every
    redis_done = postgres_done = False
    last: dict[str, str] = {}
    changed = time.monotonic()
    # Nothing changes any more: every message ran or waits past any lease and redelivery.
    quiet = max(15.0, 2 * args.visibility_timeout + 3 * args.lease)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        current = statuses()
        if current is not None:
            if current != last:
                changed = time.monotonic()
            last = current
        done = sum(1 for status in last.values() if status in FINAL)
        if last and done == len(intents):
            break
        restarts_done = redis_done and (postgres is None or postgres_done)
        if last and restarts_done and time.monotonic() - changed > quiet:
            break
        share = done / len(intents)
        if not redis_done and share >= 0.3:
            redis_done = True
            redis_server.crash()
            time.sleep(args.outage)
            redis_server.start()
            outcome.redis_restarts += 1
        if postgres is not None and not postgres_done and share >= 0.6:
            postgres_done = True
            postgres.crash()
            time.sleep(args.outage)
            postgres.start()
            outcome.postgres_restarts += 1
        if time.monotonic() >= next_kill:
            next_kill = time.monotonic() + args.kill_every
            process, _ = rng.choice(workers)
            children = worker_children(process.pid)
            if children:
                victim = rng.choice(children)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    killed.add(victim)
                    outcome.kills += 1
    else:
        outcome.notes.append(f"deadline of {args.timeout:.0f}s reached")
    if not redis_done:
        outcome.notes.append("finished before the Redis restart was due")
    if postgres is not None and not postgres_done:
        outcome.notes.append("finished before the PostgreSQL restart was due")
    # Let messages still queued (second copies, waits) run: none may deliver again.
    time.sleep(args.settle)
    outcome.seconds = time.monotonic() - started
    for process, _ in workers:
        stop_worker(process)
    final = statuses() or last
    close_connections()

    deliveries = smtp.deliveries()
    completions: dict[str, set[int]] = collections.defaultdict(set)
    unwritten: dict[str, set[int]] = collections.defaultdict(set)
    if journal.exists():
        for line in journal.read_text().splitlines():
            entry = json.loads(line)
            events = completions if entry["what"] == "completed" else unwritten
            events[entry["intent"]].add(entry["pid"])
    rows = []
    for intent in intents:
        pids = deliveries.get(intent, [])
        status = final.get(intent, "absent")
        outcome.deliveries += len(pids)
        outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
        verdict = reconcile(
            intent, pids, status, killed, completions[intent], unwritten[intent], outcome
        )
        rows.append((intent, len(pids), status, " ".join(map(str, pids)), verdict))
    with open(directory / f"deliveries-{store_name}-{policy}.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["intent", "deliveries", "record", "sender pids", "verdict"])
        writer.writerows(rows)

    smtp.stop()
    if postgres is not None:
        postgres.stop()
    redis_server.stop()
    return outcome


def reconcile(
    intent: str,
    pids: list[int],
    status: str,
    killed: set[int],
    completed_by: set[int],
    unwritten_by: set[int],
    outcome: Outcome,
) -> str:
    if status in ("failed", "unknown"):
        outcome.review += 1
        verdict = f"review ({status}, delivered {len(pids)}x)"
        if len(pids) > 1:
            outcome.duplicated += 1
            verdict += " DUPLICATE"
        return verdict
    if status == "in_progress":
        # Shown in the admin as "in progress, lease ended": visible, not lost.
        outcome.stuck += 1
        why = (
            "the store refused its completion (down) and nothing retried it"
            if unwritten_by
            else "cause not journaled"
        )
        outcome.notes.append(f"{intent}: left in_progress (stuck), delivered {len(pids)}x: {why}")
        return f"stuck in_progress (delivered {len(pids)}x): {why}"
    if not pids:
        outcome.lost += 1
        return f"LOST (record {status})"
    if len(pids) == 1:
        outcome.delivered += 1
        return "delivered"
    outcome.duplicated += 1
    # Every delivery but the last must come from a process that died (SIGKILL) before
    # it completed this intent, or whose completion the store refused (it was down):
    # either way the record still said in_progress when its lease ended.
    causes = []
    for pid in pids[:-1]:
        if pid in unwritten_by:
            causes.append(f"pid {pid} could not store the completion (store down)")
        elif pid in killed and pid not in completed_by:
            causes.append(f"pid {pid} was killed between the send and the completion")
        else:
            outcome.unexplained += 1
            return f"DUPLICATE, NOT EXPLAINED (senders {pids}, killed {sorted(killed & set(pids))})"
    outcome.notes.append(f"{intent}: delivered {len(pids)}x; " + "; ".join(causes))
    return "duplicate: " + "; ".join(causes)


# -- the script ---------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="database,redis", help="database, redis or both")
    parser.add_argument("--after-lease", default="hold,reclaim", help="hold, reclaim or both")
    parser.add_argument("--intents", type=int, default=60, help="intents per run (2000 by hand)")
    parser.add_argument("--duplicate-share", type=float, default=0.3)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--lease", type=float, default=3.0, help="OnceTask's lease, seconds")
    parser.add_argument("--work", type=float, default=0.5, help="seconds after each send")
    parser.add_argument("--visibility-timeout", type=float, default=8.0)
    parser.add_argument("--outage", type=float, default=1.0, help="seconds a server stays down")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to drain at the end")
    parser.add_argument("--timeout", type=float, default=0.0, help="deadline per run (0: auto)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", default="", help="keep the runs' files here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.timeout:
        args.timeout = 90 + args.intents * 0.5
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.one:
        outcome = run_one(args, Path(args.dir))
        print("CHAOS-OUTCOME " + json.dumps({**asdict(outcome), "ok": outcome.ok}))
        return 0
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="onceonly-chaos-"))
    results = []
    for store in args.store.split(","):
        for policy in args.after_lease.split(","):
            directory = base / f"{store}-{policy}"
            command = [
                sys.executable, __file__, "--one", "--store", store, "--after-lease", policy,
                "--dir", str(directory), "--seed", str(args.seed),
                "--intents", str(args.intents), "--duplicate-share", str(args.duplicate_share),
                "--kill-every", str(args.kill_every), "--lease", str(args.lease),
                "--work", str(args.work), "--visibility-timeout", str(args.visibility_timeout),
                "--outage", str(args.outage), "--settle", str(args.settle),
                "--timeout", str(args.timeout),
            ]  # fmt: skip
            print(f"-- {store} / {policy}: {directory}", flush=True)
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, check=False,
                    timeout=args.timeout + 300,
                )  # fmt: skip
            except subprocess.TimeoutExpired as exc:
                print(f"   the run did not end: {exc}")
                results.append({"store": store, "policy": policy, "ok": False, "error": True})
                continue
            line = next(
                (x for x in done.stdout.splitlines() if x.startswith("CHAOS-OUTCOME ")), None
            )
            if line is None:
                print(done.stdout[-3000:], done.stderr[-5000:], sep="\n")
                results.append({"store": store, "policy": policy, "ok": False, "error": True})
                continue
            result = json.loads(line.removeprefix("CHAOS-OUTCOME "))
            results.append(result)
            for note in result["notes"]:
                print(f"   {note}")
            print(f"   deliveries per intent: {directory}/deliveries-{store}-{policy}.csv")
    report(args, results)
    return 0 if all(r.get("ok") for r in results) else 1


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    print()
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores; seed {args.seed}; "
        f"2 workers -P prefork -c 2, lease {args.lease:g}s, visibility_timeout "
        f"{args.visibility_timeout:g}s, a kill every {args.kill_every:g}s"
    )
    header = (
        f"{'store':<9}{'policy':<9}{'intents':>8}{'msgs':>6}{'kills':>6}{'restarts':>10}"
        f"{'delivs':>7}{'once':>6}{'dup':>5}{'unexpl':>7}{'review':>7}{'stuck':>6}{'lost':>5}"
        f"{'secs':>6}  ok"
    )
    print(header)
    for r in results:
        if r.get("error"):
            print(f"{r['store']:<9}{r['policy']:<9}  the run failed (output above)")
            continue
        restarts = f"R{r['redis_restarts']}" + (
            f" PG{r['postgres_restarts']}" if r["store"] == "database" else ""
        )
        print(
            f"{r['store']:<9}{r['policy']:<9}{r['intents']:>8}{r['messages']:>6}{r['kills']:>6}"
            f"{restarts:>10}{r['deliveries']:>7}{r['delivered']:>6}{r['duplicated']:>5}"
            f"{r['unexplained']:>7}"
            f"{r['review']:>7}{r['stuck']:>6}{r['lost']:>5}{r['seconds']:>6.0f}  "
            f"{'yes' if r['ok'] else 'NO'}"
        )


if __name__ == "__main__":
    sys.exit(main())
