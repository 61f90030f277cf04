"""``bench/compare.py`` runs end to end, prints its table, writes its JSON, cleans up.

The peers it measures are in the ``bench`` dependency group, which neither the test
group nor CI installs: the run with the peers skips without them, while the run of our
rows and the floors (``--only ours,floors,schema``) needs no peer and runs everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.services import SERVICES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "compare.py"
BENCH_MODULES = ("celery_once", "celery_singleton", "aws_lambda_powertools", "matplotlib")
BENCH_MISSING = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
INDEXES = {
    "onceonly_expires_idx",
    "onceonly_status_created_idx",
    "onceonly_task_created_idx",
    "onceonly_created_idx",
    "onceonly_key_idx",
}

pytestmark = [pytest.mark.services("postgres", "redis"), pytest.mark.slow]


def run_compare(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """Run the script at its smallest size; return what it printed and its JSON."""
    pg_host, pg_port, _ = SERVICES["postgres"]
    redis_host, redis_port, _ = SERVICES["redis"]
    env = os.environ | {
        "ONCEONLY_BENCH_PG_HOST": pg_host,
        "ONCEONLY_BENCH_PG_PORT": str(pg_port),
        "ONCEONLY_BENCH_REDIS_URL": f"redis://{redis_host}:{redis_port}/12",
    }
    db_name = os.environ.get("ONCEONLY_TEST_DB_NAME", "test_onceonly") + "_compare"
    command = [sys.executable, str(SCRIPT), "--n", "4", "--rounds", "1", "--batch", "2"]
    command += ["--db-name", db_name, "--json", str(tmp_path / "compare.json")]
    command += ["--chart", str(tmp_path / "compare.png"), *args]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads((tmp_path / "compare.json").read_text())


def assert_cleaned_up(figures: dict[str, Any]) -> None:
    """No key of the run is left in Redis, and its scratch database is gone."""
    import psycopg
    import redis

    environment = figures["environment"]
    conn = redis.Redis.from_url(environment["redis_url"])
    assert not list(conn.scan_iter(match=f"*{environment['redis_prefix']}*"))
    conn.close()
    host, port, _ = SERVICES["postgres"]
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres") as pg:
        found = pg.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [environment["scratch_database"]]
        ).fetchone()
    assert found is None


def test_compare_without_peers_prints_its_table_and_writes_its_json(tmp_path: Path) -> None:
    printed, figures = run_compare(tmp_path, "--only", "ours,floors,schema")

    rows = {row["name"]: row for row in figures["rows"]}
    assert {row["category"] for row in rows.values()} == {"ours", "floors", "schema"}
    assert all(row["us_per_op"] > 0 for row in rows.values())
    assert all(row["cpu_us_per_op"] >= 0 for row in rows.values())
    assert "| x Powertools | client CPU µs/op |" in printed
    for name in (
        "ours RedisStore: check_lock + complete",
        "ours RedisStore: check_lock (replay)",
        "ours DatabaseStore PostgreSQL: check_lock + complete",
        "ours DatabaseStore PostgreSQL: check_lock (replay)",
    ):
        assert rows[name]["ratio_to_floor"] > 0
        assert f"| **{name}** |" in printed
    assert rows["ours RedisStore: check_lock + complete"]["floor"] == "floor: Redis SET NX + SET"
    assert set(figures["schema_indexes"]) == INDEXES
    assert "| index dropped from the full table |" in printed
    if importlib.util.find_spec("matplotlib") is None:
        assert "chart: skipped (matplotlib is not installed" in printed
    else:
        assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert_cleaned_up(figures)


@pytest.mark.skipif(
    bool(BENCH_MISSING),
    reason=(
        f"not installed: {', '.join(BENCH_MISSING)}; the peers are in the bench dependency "
        "group, never in the test group or CI: pip install --group bench"
    ),
)
def test_compare_with_the_peers_measures_every_row_and_draws_its_chart(tmp_path: Path) -> None:
    printed, figures = run_compare(tmp_path)

    rows = {row["name"]: row for row in figures["rows"]}
    assert {row["category"] for row in rows.values()} == {
        "floors",
        "ours",
        "celery-once",
        "celery-singleton",
        "powertools",
        "schema",
    }
    replay = rows["ours RedisStore: check_lock (replay)"]
    assert replay["peer"] == "Powertools idempotent_function, Redis (replay)"
    assert replay["ratio_to_peer"] > 0
    assert "| peer row | µs/op | RedisStore ÷ peer |" in printed
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert_cleaned_up(figures)
