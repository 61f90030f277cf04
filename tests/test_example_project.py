"""The example shop's demo, run as CI runs it: a subprocess with its own files.

The demo starts a real Celery worker and a real SMTP server. Its report (``report.json``
and the printed table) is checked against the SMTP server's own mailboxes, read here
from the Maildir files without any of the demo's code, and against the records.
"""

from __future__ import annotations

import email
import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "example_project" / "manage.py"
WELCOME = "Welcome to the shop"
RESET = "Reset your password"


def demo_env(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The demo's own settings, on files under ``tmp_path``."""
    environ = {
        **os.environ,
        "DEMO_DATABASE": str(tmp_path / "demo.sqlite3"),
        "DEMO_OUTBOX_DIR": str(tmp_path / "outbox"),
        # The package from this checkout, installed or not.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    for name in ("DJANGO_SETTINGS_MODULE", "DEMO_STORE", "DEMO_BROKER"):
        environ.pop(name, None)  # the demo's own settings, not the tests'
    if not env or "REDIS_URL" not in env:
        environ.pop("REDIS_URL", None)
    return environ


def run_demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, str(MANAGE), "demo", *args],
        env=demo_env(tmp_path, env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


def mailbox_counts(folder: Path) -> Counter[tuple[str, str]]:
    """(recipient, subject) -> messages in a Maildir, one file each, as the server kept them."""
    counts: Counter[tuple[str, str]] = Counter()
    for path in [*folder.glob("new/*"), *folder.glob("cur/*")]:
        message = email.message_from_bytes(path.read_bytes())
        for recipient in message.get_all("Delivered-To") or []:
            counts[(recipient, str(message["Subject"]))] += 1
    return counts


def table_row(stdout: str, label: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.strip().startswith(label))
    return re.split(r"\s{2,}", line.strip())


def check_report_against_mailboxes(tmp_path: Path, stdout: str) -> dict[str, Any]:
    """Every count the demo reports is what the SMTP server's mailbox holds."""
    report = json.loads((tmp_path / "outbox" / "report.json").read_text())
    runs = report["runs"]
    assert list(runs) == ["plain", "reclaim", "hold"]
    totals = []
    for name, run in runs.items():
        kept = mailbox_counts(tmp_path / "outbox" / "mail" / name)
        assert kept, f"{name}: the SMTP server kept nothing"
        for address, customer in run["customers"].items():
            assert customer["welcome"] == kept[(address, WELCOME)], (name, address)
            assert customer["password_reset"] == kept[(address, RESET)], (name, address)
        assert run["emails_received"] == kept.total()
        assert {address for address, _ in kept} <= set(run["customers"])
        totals.append(str(kept.total()))
    # The printed table's "all" row: customers, expected, then one total per run.
    assert table_row(stdout, "all")[3:] == totals
    return report


def by_scenario(run: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    return [c for c in run["customers"].values() if c["scenario"] == scenario]


def extra(customers: list[dict[str, Any]]) -> int:
    return sum(c["welcome"] + c["password_reset"] - c["expected"] for c in customers)


def check_story(report: dict[str, Any]) -> None:
    """What each way of sending did, from the server's counts."""
    plain, reclaim, hold = (report["runs"][name] for name in ("plain", "reclaim", "hold"))
    # Plain tasks: every double click and every message published twice is a second email.
    for scenario in ("double_click", "duplicate"):
        customers = by_scenario(plain, scenario)
        assert customers, scenario
        assert extra(customers) >= len(customers), scenario
    # Nobody is left without an email, in any run (the 451s were retried).
    for run in (plain, reclaim, hold):
        for customer in run["customers"].values():
            assert customer["welcome"] >= 1
            assert customer["password_reset"] >= (1 if customer["password_reset_token_id"] else 0)
    # OnceTask, at-least-once: duplicates only where the server accepted, then timed out.
    timed_out = by_scenario(reclaim, "timeout")
    assert extra(timed_out) == reclaim["faults_injected"]["late"] > 0
    others = [c for c in reclaim["customers"].values() if c["scenario"] != "timeout"]
    assert extra(others) == 0
    # OnceTask, at-most-once: exactly what was expected for everyone, and every timeout
    # is an unknown record (whose email did arrive).
    assert all(
        c["welcome"] + c["password_reset"] == c["expected"] for c in hold["customers"].values()
    )
    assert len(hold["unknown"]) == hold["faults_injected"]["late"]
    assert hold["records"]["unknown"] == len(hold["unknown"])
    assert plain["records"] == {}


def test_demo_help_lists_the_knobs(tmp_path: Path) -> None:
    stdout = run_demo(tmp_path, "--help")
    for knob in ("--users", "--double-clicks", "--duplicates", "--transient", "--timeouts"):
        assert knob in stdout
    for knob in ("--store {database,redis}", "--broker {filesystem,redis}", "--serve"):
        assert knob in stdout


@pytest.mark.slow
def test_demo_report_matches_the_smtp_servers_mailboxes(tmp_path: Path) -> None:
    stdout = run_demo(tmp_path, "--users", "10")
    report = check_report_against_mailboxes(tmp_path, stdout)
    check_story(report)
    assert report["settings"]["store"] == "django_onceonly.stores.DatabaseStore"
    assert report["settings"]["broker"] == "filesystem"
    # The records the admin shows, read from the demo's database file.
    with sqlite3.connect(tmp_path / "demo.sqlite3") as db:
        unknown = {
            row[0]
            for row in db.execute(
                "SELECT key FROM django_onceonly_idempotencyrecord WHERE scope = '' "
                "AND status = 'unknown'"
            )
        }
        blocked = db.execute(
            "SELECT SUM(duplicates_blocked) FROM django_onceonly_idempotencyrecord"
        ).fetchone()[0]
        admins = db.execute("SELECT username FROM auth_user WHERE is_superuser").fetchall()
    assert unknown == set(report["runs"]["hold"]["unknown"])
    assert blocked > 0
    assert admins == [("oncall",)]
    assert "login: oncall / oncall-demo" in stdout
    assert "bin/demo --serve" in stdout


@pytest.mark.slow
@pytest.mark.services("redis")
def test_demo_with_redis_url_uses_redis_as_broker_and_store(tmp_path: Path) -> None:
    import redis

    url = os.environ.get("ONCEONLY_TEST_DEMO_REDIS", "redis://127.0.0.1:6379/11")
    prefix = f"onceonly-demo-test-{uuid.uuid4().hex[:12]}"
    conn = redis.Redis.from_url(url)
    try:
        stdout = run_demo(
            tmp_path, "--users", "8", env={"REDIS_URL": url, "DEMO_REDIS_PREFIX": prefix}
        )
        report = check_report_against_mailboxes(tmp_path, stdout)
        check_story(report)
        assert report["settings"]["store"] == "django_onceonly.stores.RedisStore"
        assert report["settings"]["broker"] == "redis"
        assert "broker: redis; records: RedisStore" in stdout
        keys = [key.decode() for key in conn.scan_iter(match=f"{prefix}:*", count=1000)]
        assert any(":r:" in key for key in keys), "no RedisStore record under the prefix"
        assert any(key.startswith(f"{prefix}:celery:") for key in keys), "no broker key"
    finally:
        # Only this run's keys: other runs may share the database.
        for key in conn.scan_iter(match=f"{prefix}:*", count=1000):
            conn.unlink(key)
        conn.close()


def test_shop_checkout_places_one_order_per_idempotency_key_over_http(tmp_path: Path) -> None:
    # The example shop served by runserver: a retried checkout (same Idempotency-Key)
    # gets the first answer back and places no second order; another cart with the
    # same key is 422; a new key is a new order.
    import base64
    import http.client
    import socket
    import time

    env = demo_env(tmp_path)
    manage = [sys.executable, str(MANAGE)]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, cwd=ROOT, check=True, timeout=120)
    subprocess.run(
        [
            *manage,
            "shell",
            "-c",
            "from django.contrib.auth.models import User; "
            "User.objects.create_user('ann', password='pw-ann')",
        ],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [*manage, "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    auth = "Basic " + base64.b64encode(b"ann:pw-ann").decode()

    def post(key: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST",
            "/api/checkout/",
            body=json.dumps(body),
            headers={
                "Authorization": auth,
                "Content-Type": "application/json",
                "Idempotency-Key": f'"{key}"',
            },
        )
        answer = conn.getresponse()
        data = json.loads(answer.read() or b"{}")
        headers = {name.lower(): value for name, value in answer.getheaders()}
        conn.close()
        return answer.status, headers, data

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "runserver did not start"
                time.sleep(0.2)
        first = post("order-7f3a", {"cart": "cart-1", "amount": "19.90"})
        retry = post("order-7f3a", {"cart": "cart-1", "amount": "19.90"})
        other_cart = post("order-7f3a", {"cart": "cart-2", "amount": "5.00"})
        new_key = post("order-8b21", {"cart": "cart-2", "amount": "5.00"})
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert first[0] == 201
    assert retry[0] == 201
    assert retry[1]["idempotent-replayed"] == "true"
    assert retry[2] == first[2]
    assert retry[1]["location"] == first[1]["location"]
    assert other_cart[0] == 422
    assert other_cart[1]["content-type"] == "application/problem+json"
    assert new_key[0] == 201
    assert new_key[2]["order_id"] != first[2]["order_id"]
    with sqlite3.connect(tmp_path / "demo.sqlite3") as db:
        orders = db.execute("SELECT cart, amount FROM shop_order ORDER BY id").fetchall()
    assert [cart for cart, _ in orders] == ["cart-1", "cart-2"]


def test_the_shops_own_idempotency_tests_pass_with_the_test_kit(tmp_path: Path) -> None:
    # The worked example of docs/testing-kit.md: the shop's tests, with its own settings.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        env=demo_env(tmp_path),
        cwd=ROOT / "example_project",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(done.stdout[-2000:])
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "3 passed" in done.stdout
