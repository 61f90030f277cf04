"""Where a new key's claim and completion spend their time on Redis, design by design.

    .venv/bin/python bench/redis_paths.py [--n 1000] [--rounds 7] [--busy]

Starts its own redis-server (no persistence, 127.0.0.1, a free port, as
``bench/redis_audit.py`` does), so that its CPU figures are ours alone. Each row is one
operation: claim a new key, then store its result. The rows take turns in batches of
20, in a new random order at each turn, and each figure is the median of the rounds:

- ``floor: SET NX + SET``: what Powertools sends, the cheapest pair of commands;
- ``RedisStore's scripts alone``: ``EVALSHA`` of the claim and finish scripts with the
  arguments ``RedisStore`` builds for them, and no other Python of ours;
- ``string record, MULTI + mark``: the design RedisStore does not use. The record is one
  string, claimed by ``SET NX GET`` in a ``MULTI`` with the audit mark (``INCR``,
  ``HSET``), so that the mark lands in the same atomic step; completed by a fenced
  script (``GET``, compare the owner, ``SET``, the mark);
- ``string record, no audit``: the same without the marks: a plain ``SET NX GET``, then
  the fenced script;
- ``ours: check_lock + complete``: the public API on ``RedisStore``, audit marks on.

Columns: wall µs per operation, this process's CPU µs per operation (the client: our
Python and redis-py's), and Redis's CPU µs per operation (``INFO cpu`` of the server,
each row run alone after the rounds). A second table gives what Redis spends on one
call of each kind, from its ``SLOWLOG`` (threshold 0, one call at a time, medians in
whole microseconds): a plain ``SET``, a script that only returns, a script whose only
command is ``SET NX``, and ``RedisStore``'s claim (a new key) and finish scripts. ``--busy`` runs a spinning process at the lowest
priority for the whole run: on a virtual machine whose idle cores sleep, every round
trip otherwise also pays for waking them, which hides what the client and the server
themselves spend.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis

from bench.busy import busy_core
from bench.redis_audit import RESULT, configure, new_key, start_redis

TTL = 86_400
LEASE = 300
RESULT_JSON = json.dumps(RESULT)
# A string record's fenced completion: the record starts with its status and owner, so
# one prefix comparison checks both. KEYS: record, dirty hash, counter (the last two
# only with marks); ARGV: member, expected prefix, completed record, ms to keep it.
STRING_FINISH = """
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[2]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
if #KEYS >= 3 then
  local seq = redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[2], ARGV[1], 'w' .. seq)
end
return 1
"""


class Paths:
    """The rows: each a callable that claims and completes ``n`` new keys."""

    def __init__(self, client: redis.Redis) -> None:
        from django_onceonly.stores import get_store
        from django_onceonly.stores.redis import RedisStore
        from django_onceonly.stores.redis_scripts import CLAIM, FINISH

        store = get_store()
        assert isinstance(store, RedisStore), store
        self.store = store
        self.client = client
        self.claim, self.finish = CLAIM, FINISH
        CLAIM.load(client)
        FINISH.load(client)
        self.string_finish = client.script_load(STRING_FINISH)

    def rows(self) -> dict[str, Callable[[int], None]]:
        return {
            "floor: SET NX + SET": self.floor,
            "RedisStore's scripts alone": self.scripts,
            "string record, MULTI + mark": self.string_marked,
            "string record, no audit": self.string_plain,
            "ours: check_lock + complete": self.ours,
        }

    def script_calls(
        self, key: str
    ) -> tuple[tuple[list[str], list[Any]], tuple[list[str], list[Any]]]:
        """The keys and arguments ``RedisStore`` builds for the claim of ``key`` and its finish."""
        from django_onceonly.stores.base import ClaimRequest

        now = dt.datetime.now(dt.UTC)
        token = secrets.token_hex(16)
        request = ClaimRequest(
            scope="",
            key=key,
            token=token,
            now=now,
            lease_expires_at=now + dt.timedelta(seconds=LEASE),
            after_lease="reclaim",
        )
        finish = self.store.finish_call(
            "",
            key,
            token,
            status="completed",
            result_json=RESULT_JSON,
            error="",
            now=now,
            expires_at=now + dt.timedelta(seconds=TTL),
        )
        return self.store.claim_call(request), finish

    def floor(self, n: int) -> None:
        client = self.client
        for _ in range(n):
            key = new_key()
            client.set(key, secrets.token_hex(16), nx=True, ex=LEASE)
            client.set(key, RESULT_JSON, ex=TTL)

    def scripts(self, n: int) -> None:
        client, claim, finish = self.client, self.claim, self.finish
        for _ in range(n):
            (keys, args), (finish_keys, finish_args) = self.script_calls(new_key())
            reply = client.evalsha(claim.sha, len(keys), *keys, *args)
            assert reply[0] == b"acquired", reply
            assert client.evalsha(finish.sha, len(finish_keys), *finish_keys, *finish_args) == 1

    def _string(self, n: int, marks: bool) -> None:
        store, client, finish = self.store, self.client, self.string_finish
        for _ in range(n):
            key = new_key()
            keys = store.keys("", key)
            token = secrets.token_hex(16)
            now = time.time_ns() // 1000
            head = json.dumps(["in_progress", token])[:-1]
            record = f'{head}, "", "{key}", "", "", "", {{}}, {now}, {now}, {now + LEASE * 10**6}]'
            if marks:
                pipe = client.pipeline(transaction=True)
                pipe.set(keys.record, record, nx=True, get=True, ex=LEASE)
                pipe.incr(keys.seq)
                pipe.hset(keys.dirty, keys.member, "w")
                assert pipe.execute()[0] is None
                script_keys = [keys.record, keys.dirty, keys.seq]
            else:
                assert client.set(keys.record, record, nx=True, get=True, ex=LEASE) is None
                script_keys = [keys.record]
            done = json.dumps(["completed", token, RESULT_JSON, now, now + TTL * 10**6])
            args = [keys.member, head, done, TTL * 1000]
            assert client.evalsha(finish, len(script_keys), *script_keys, *args) == 1

    def string_marked(self, n: int) -> None:
        self._string(n, marks=True)

    def string_plain(self, n: int) -> None:
        self._string(n, marks=False)

    def ours(self, n: int) -> None:
        from django_onceonly import check_lock

        for _ in range(n):
            lock = check_lock(new_key())
            assert lock.locked, lock
            lock.complete(RESULT)


def call_costs(client: redis.Redis, paths: Paths, n: int) -> dict[str, float]:
    """Redis's own µs for one call of each kind: the median of ``n`` SLOWLOG durations."""
    empty = client.script_load("return 1")
    set_nx = client.script_load("return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', 300000)")
    durations: dict[str, list[int]] = {
        "SET NX (plain command)": [],
        "a script that only returns 1": [],
        "a script whose only command is SET NX": [],
        "RedisStore's claim script, a new key": [],
        "RedisStore's finish script": [],
    }
    names = list(durations)
    client.config_set("slowlog-max-len", 128)
    client.config_set("slowlog-log-slower-than", 0)

    def timed(name: str, *command: Any) -> Any:
        client.slowlog_reset()
        reply = client.execute_command(*command)
        verb = str(command[0]).encode()
        # A script's own commands are logged too, under their own names: one entry is
        # the call itself.
        entries = [e for e in client.slowlog_get(128) if e["command"].split(b" ")[0] == verb]
        assert len(entries) == 1, entries
        durations[name].append(entries[0]["duration"])
        return reply

    try:
        for _ in range(n):
            key = new_key()
            timed(names[0], "SET", key, "token", "NX", "PX", 300_000)
            timed(names[1], "EVALSHA", empty, 0)
            timed(names[2], "EVALSHA", set_nx, 1, f"{key}:s", "token")
            (keys, args), (finish_keys, finish_args) = paths.script_calls(key)
            timed(names[3], "EVALSHA", paths.claim.sha, len(keys), *keys, *args)
            finished = timed(
                names[4], "EVALSHA", paths.finish.sha, len(finish_keys), *finish_keys, *finish_args
            )
            assert finished == 1
    finally:
        client.config_set("slowlog-log-slower-than", 10_000)
    return {name: statistics.median(values) for name, values in durations.items()}


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(
    client: redis.Redis, rows: dict[str, Callable[[int], None]], n: int, rounds: int
) -> dict[str, dict[str, float]]:
    names = list(rows)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(0)
    for run in rows.values():
        run(max(n // 10, 1))  # warm-up: scripts loaded, connections open
    for _ in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        used = dict.fromkeys(names, 0.0)
        done = 0
        gc.collect()
        gc.disable()
        try:
            while done < n:
                size = min(20, n - done)
                order.shuffle(names)
                for name in names:
                    start, started = time.perf_counter(), time.process_time()
                    rows[name](size)
                    spent[name] += time.perf_counter() - start
                    used[name] += time.process_time() - started
                done += size
        finally:
            gc.enable()
        for name in names:
            wall[name].append(spent[name] / n * 1e6)
            cpu[name].append(used[name] / n * 1e6)
    figures = {
        name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])}
        for name in rows
    }
    for name, run in rows.items():  # each row alone, for the server's CPU
        before = server_cpu(client)
        run(n)
        figures[name]["server"] = (server_cpu(client) - before) / n * 1e6
    return figures


def table(figures: dict[str, dict[str, float]]) -> list[str]:
    floor = figures["floor: SET NX + SET"]
    lines = [
        "| operation (a new key: claim + complete) | µs/op | x floor | client CPU µs/op | Redis CPU µs/op |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in figures.items():
        ratio = "-" if row is floor else f"{row['wall'] / floor['wall']:.2f}"
        lines.append(
            f"| {name} | {row['wall']:.0f} | {ratio} | {row['cpu']:.0f} | {row['server']:.1f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="operations per row and round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--busy", action="store_true", help="keep a spinning process at the lowest priority"
    )
    args = parser.parse_args()
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be at least 1")
    directory = tempfile.mkdtemp(prefix="onceonly-bench-paths-")
    process, port = start_redis(directory)
    try:
        configure(port, ["sqlite"], directory)
        client = redis.Redis(port=port)
        load = os.getloadavg()
        paths = Paths(client)
        with busy_core(args.busy):
            figures = measure(client, paths.rows(), args.n, args.rounds)
            costs = call_costs(client, paths, args.n)
        parser_name = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure Python"
        print(
            f"redis-server {client.info('server')['redis_version']} (own, port {port}), "
            f"redis-py {redis.__version__} ({parser_name} parser), "
            f"{'a busy core beside' if args.busy else 'no busy core'}; load average "
            f"{load[0]:.2f} before; n={args.n}, median of {args.rounds} rounds\n"
        )
        print("\n".join(table(figures)))
        print(f"\n| operation (one call): Redis's own time, SLOWLOG median of {args.n} | µs |")
        print("|---|---:|")
        for name, micros in costs.items():
            print(f"| {name} | {micros:g} |")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
