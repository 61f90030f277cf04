"""The contention, scale and task benchmarks run small: their tables, checks and exit codes.

Full-size runs are by hand (``docs/performance.md`` has the commands and figures); these
run each script at a size of seconds against the real servers and check what it prints:
every row of its table, the verdicts, and that it cleaned up after itself. No figure is
asserted: timings belong to the benchmarks, not to the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import SERVICES

ROOT = Path(__file__).resolve().parent.parent
PREFIX = os.environ.get("ONCEONLY_TEST_DB_NAME", "test_onceonly")

pytestmark = pytest.mark.slow


def bench_env() -> dict[str, str]:
    pg_host, pg_port, _ = SERVICES["postgres"]
    maria_host, maria_port, _ = SERVICES["mariadb"]
    redis_host, redis_port, _ = SERVICES["redis"]
    return os.environ | {
        "ONCEONLY_BENCH_PG_HOST": pg_host,
        "ONCEONLY_BENCH_PG_PORT": str(pg_port),
        "ONCEONLY_BENCH_MARIADB_HOST": maria_host,
        "ONCEONLY_BENCH_MARIADB_PORT": str(maria_port),
        "ONCEONLY_BENCH_REDIS_URL": f"redis://{redis_host}:{redis_port}/14",
    }


def run(script: str, *args: str, db: str = "") -> subprocess.CompletedProcess[str]:
    redis_host, redis_port, _ = SERVICES["redis"]
    env = bench_env() | {
        # bench/tasks.py: its scratch database, its Redis store (database 11).
        "ONCEONLY_BENCH_TASKS_DB": db or f"{PREFIX}_tasks",
        "ONCEONLY_BENCH_REDIS_STORE": f"redis://{redis_host}:{redis_port}/11",
    }
    return subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def table_rows(printed: str) -> list[list[str]]:
    """The cells of each data row of the markdown table ``printed`` holds."""
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in printed.splitlines()
        if line.startswith("| ")
        and not line.startswith(("| store", "| operation"))
        and "---" not in line
    ]


def kind_rows(printed: str) -> dict[str, list[str]]:
    """The cells of each row of bench/tasks.py's table, by the task kind that starts it."""
    return {
        line.split()[0]: line.split()
        for line in printed.splitlines()
        if line.split()[:1] and line.split()[0] in ("plain", "durable", "once", "duplicate")
    }


def pg_databases(like: str) -> list[str]:
    import psycopg

    host, port, _ = SERVICES["postgres"]
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres") as pg:
        rows = pg.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [like])
        return [row[0] for row in rows.fetchall()]


@pytest.mark.services("postgres", "mariadb", "redis")
def test_contention_gives_one_locked_answer_per_key_on_every_store() -> None:
    done = run(
        "contention.py",
        *("--procs", "2", "--claims", "50", "--keys", "60", "--rounds", "1"),
        *("--db-name", f"{PREFIX}_contention"),
    )

    assert done.returncode == 0, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    # store, keys, row: both modes and both rows on each store, in the same run.
    assert [row[:3] for row in rows] == [
        [store, keys, kind]
        for store in ("postgres", "mariadb", "redis")
        for keys in ("1 hot key", "distinct")
        for kind in ("ours", "floor")
    ]
    for row in rows:
        locked, claimed, verdict = int(row[5]), int(row[6]), row[7]
        assert (locked, verdict) == (claimed, "yes"), row
        assert claimed == 1 if row[1] == "1 hot key" else 1 < claimed <= 60
    assert "every key claimed got exactly one locked answer" in done.stdout
    assert pg_databases(f"%{PREFIX}_contention%") == []


@pytest.mark.services("postgres", "redis")
def test_contention_exits_1_when_a_key_gets_a_second_locked_answer() -> None:
    # A lease of a millisecond ends long before the next claim of the same key, which
    # then takes it over: a second "locked" answer for that key, as the store intends
    # for a claim whose owner is presumed dead. The script must say so and fail.
    done = run(
        "contention.py",
        *("--procs", "2", "--claims", "30", "--keys", "20", "--rounds", "1"),
        *("--stores", "postgres,redis", "--lease", "0.001"),
        *("--db-name", f"{PREFIX}_contention_lease"),
    )

    assert done.returncode == 1, done.stdout + done.stderr
    verdicts = {(row[0], row[1], row[2]): row[7] for row in table_rows(done.stdout)}
    for store in ("postgres", "redis"):
        assert verdicts[(store, "1 hot key", "ours")].startswith("NO (1 keys)")
        assert verdicts[(store, "1 hot key", "floor")] == "yes"
    assert "NOT exactly one locked answer per key: postgres hot ours" in done.stdout


@pytest.mark.services("postgres")
def test_scale_measures_claims_on_both_sizes_and_purges_every_expired_record() -> None:
    done = run(
        "scale.py",
        *("--small", "1000", "--large", "20000", "--n", "20", "--rounds", "1"),
        *("--batch-size", "500", "--db-name", f"{PREFIX}_scale"),
    )

    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row[0]: row for row in table_rows(done.stdout)}
    assert set(rows) == {"claim+complete", "duplicate"}
    assert "| operation | µs/op, 1,000 records | µs/op, 20,000 records | large / small |" in (
        done.stdout
    )
    for row in rows.values():
        assert float(row[3]) > 0
    purged = re.search(
        r"purge: ([\d,]+) of ([\d,]+) expired records deleted .* batch size 500", done.stdout
    )
    assert purged is not None, done.stdout
    # The large table's records and the claims the rounds made there: all expired.
    assert purged[1] == purged[2]
    assert int(purged[1].replace(",", "")) >= 20000
    assert pg_databases(f"{PREFIX}_scale%") == []


@pytest.mark.services("postgres", "redis")
@pytest.mark.parametrize("store", ["database", "redis"])
def test_tasks_bench_compares_oncetask_with_the_hand_written_durable_task(store: str) -> None:
    done = run("tasks.py", "--n", "30", "--rounds", "1", "--store", store, db=f"{PREFIX}_tasks")

    assert done.returncode == 0, done.stdout + done.stderr
    kinds = kind_rows(done.stdout)
    assert set(kinds) == {"plain", "durable", "once", "duplicate"}
    assert kinds["durable"][3] == "1.00"  # its own floor
    assert re.search(
        r"OnceTask \(new intents\) / hand-written durable task = \d+\.\d\d "
        r"\(median of the rounds. ratios \d+\.\d\d\): (meets|MISSES)",
        done.stdout,
    )


@pytest.mark.services("postgres", "redis")
@pytest.mark.parametrize("store", ["database", "redis"])
def test_tasks_bench_eager_gives_the_client_cpu_per_task_and_drops_its_database(
    store: str,
) -> None:
    db = f"{PREFIX}_tasks_eager"
    done = run("tasks.py", "--eager", "--n", "20", "--rounds", "1", "--store", store, db=db)

    assert done.returncode == 0, done.stdout + done.stderr
    kinds = kind_rows(done.stdout)
    assert set(kinds) == {"plain", "durable", "once", "duplicate"}
    assert kinds["durable"][2] == "1.00"  # its own floor, CPU
    assert kinds["durable"][4] == "1.00"  # and wall
    assert re.search(
        r"OnceTask \(new intents\): -?\d+ µs of client CPU per task more than the "
        r"hand-written durable task \(\d+\.\d\dx\)",
        done.stdout,
    )
    # Nothing left behind, and no duplicate count written to a dropped table.
    assert "could not write duplicate counts" not in done.stderr
    assert pg_databases(f"{db}%") == []


PATHS = [
    "floor: SET NX + SET",
    "RedisStore's scripts alone",
    "string record, MULTI + mark",
    "string record, no audit",
    "ours: check_lock + complete",
]

CALLS = [
    "SET NX (plain command)",
    "a script that only returns 1",
    "a script whose only command is SET NX",
    "RedisStore's claim script, a new key",
    "RedisStore's finish script",
]


def spinners() -> list[str]:
    """The processes bench/redis_paths.py --busy starts, by their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"os.nice(19)" in command and b"while True: pass" in command:
            found.append(proc.name)
    return found


def test_redis_paths_measures_each_design_and_stops_its_server_and_spinner() -> None:
    import socket

    done = run("redis_paths.py", "--n", "20", "--rounds", "1", "--busy")

    assert done.returncode == 0, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    assert [row[0] for row in rows[:5]] == PATHS
    assert rows[0][2] == "-"  # the floor is its own floor
    assert [row[0] for row in rows[5:]] == CALLS
    assert all(re.fullmatch(r"\d+(\.\d+)?", row[1]) for row in rows[5:])
    assert all(re.fullmatch(r"\d+\.\d\d", row[2]) for row in rows[1:5])
    port = re.search(r"\(own, port (\d+)\)", done.stdout)
    assert port is not None
    assert "a busy core beside" in done.stdout
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", int(port.group(1))), timeout=2),
    ):
        pass
    assert spinners() == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--n", "0"), "--n and --rounds must be at least 1"),
        (("--rounds", "-1"), "--n and --rounds must be at least 1"),
        (("--n", "ten"), "argument --n: invalid int value: 'ten'"),
    ],
)
def test_redis_paths_refuses_a_size_it_cannot_measure_before_starting_a_server(
    args: tuple[str, str], error: str
) -> None:
    done = run("redis_paths.py", *args)

    assert done.returncode == 2
    assert error in done.stderr
    assert "redis-server" not in done.stdout
    assert spinners() == []
