"""``bench/chaos.py`` run small: both stores, both lease policies, real faults.

Each run starts its own redis-server (broker and, with ``RedisStore``, store), its own
PostgreSQL cluster (with ``DatabaseStore``) and an SMTP server, two prefork workers,
SIGKILLs a worker child every 1.5 seconds, crashes and restarts the redis-server once
and PostgreSQL once, then reconciles the mailbox with the records. The script's own
verdict is the assertion: nothing lost, no duplicate with ``hold``, every duplicate with
``reclaim`` explained by a named process that died (or whose completion the store
refused) between the send and the completion. The table it prints shows the figures.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import IN_CI

ROOT = Path(__file__).resolve().parents[1]


def _missing() -> list[str]:
    missing = []
    if not shutil.which("redis-server"):
        missing.append("redis-server (apt-get install redis-server)")
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        missing.append("the PostgreSQL server binaries (apt-get install postgresql)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        missing.append("runuser, to run PostgreSQL as the postgres user")
    return missing


@pytest.mark.slow
@pytest.mark.skipif(bool(_missing()) and not IN_CI, reason="; ".join(_missing()) or "-")
def test_chaos_run_loses_nothing_and_explains_every_duplicate(tmp_path: Path) -> None:
    command = [
        sys.executable, "bench/chaos.py",
        "--intents", "24", "--work", "1", "--kill-every", "1.5",
        "--lease", "2", "--visibility-timeout", "5", "--settle", "3",
        "--timeout", "150", "--dir", str(tmp_path),
    ]  # fmt: skip

    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=840, check=False
    )

    print(done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    table = done.stdout.split("store    policy", 1)[1].splitlines()[1:5]
    assert [line.split()[:2] for line in table] == [
        ["database", "hold"],
        ["database", "reclaim"],
        ["redis", "hold"],
        ["redis", "reclaim"],
    ]
    for line in table:
        assert line.endswith("yes"), line
        assert "R1" in line
    assert "PG1" in table[0]
    assert "PG1" in table[1]
    for name in ("database-hold", "database-reclaim", "redis-hold", "redis-reclaim"):
        deliveries = (tmp_path / name / f"deliveries-{name}.csv").read_text().splitlines()
        assert len(deliveries) == 25  # a header and one line per intent
