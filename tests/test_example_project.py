"""The example project's demo: concurrent retries send one welcome email per user."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "example_project" / "manage.py"


def outbox_counts(path: Path) -> Counter[str]:
    """Emails per recipient, one line per email as the demo's backend writes them."""
    return Counter(line.split("\t")[0] for line in path.read_text().splitlines() if line)


@pytest.mark.slow
def test_demo_sends_exactly_one_welcome_email_per_user_through_check_lock(
    tmp_path: Path,
) -> None:
    users = 10
    env = {
        **os.environ,
        "DEMO_DATABASE": str(tmp_path / "demo.sqlite3"),
        "DEMO_OUTBOX_DIR": str(tmp_path / "outbox"),
        # The package from this checkout, installed or not.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the demo's own settings, not the tests'
    command = [sys.executable, str(MANAGE), "demo", "--users", str(users)]
    command += ["--processes", "2", "--threads", "4", "--attempts", "6"]
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr

    guarded = outbox_counts(tmp_path / "outbox" / "check_lock.log")
    expected = {f"demo-user-{n:03d}@example.com" for n in range(1, users + 1)}
    assert set(guarded) == expected
    assert set(guarded.values()) == {1}
    assert "check_lock: exactly one welcome email per user (10 users)" in done.stdout

    # The naive flag is racy, so how many duplicates it lets through varies; what is
    # certain is that every user got at least one email and the table counted them all.
    naive = outbox_counts(tmp_path / "outbox" / "naive.log")
    assert set(naive) == expected
    naive_row = next(line for line in done.stdout.splitlines() if line.startswith("naive "))
    assert naive_row.split()[:4] == ["naive", str(users), str(users * 6), str(naive.total())]
    print(f"naive sent {naive.total()} emails to {users} users over {users * 6} attempts")
