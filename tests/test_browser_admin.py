"""The admin of the example project, driven in headless Chromium by Playwright.

The example project runs as its own ``manage.py runserver`` on 127.0.0.1, on a scratch
SQLite file filled through ``check_lock`` by ``manage.py shell``. The browser logs in,
searches a key, filters by status, opens a record and releases it through the
confirmation page (then releases a running one, which needs the extra box); the test
reads the database file afterwards.

It uses Debian's Chromium (``/usr/bin/chromium``, or ``ONCEONLY_CHROMIUM``), never a
browser downloaded by Playwright. Locally, a missing Chromium or Playwright skips the
test with the command that installs it; in CI (``CI=true``) it fails instead.
With ``ONCEONLY_SCREENSHOTS=1`` it saves the screenshots used in ``docs/admin.md``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.services import IN_CI

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "example_project" / "manage.py"
IMAGES = ROOT / "docs" / "images"
CHROMIUM = os.environ.get("ONCEONLY_CHROMIUM", "/usr/bin/chromium")
# As the machine's own Chromium must run as root in a container, and never phone home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = os.environ.get("ONCEONLY_SCREENSHOTS", "") == "1"
PASSWORD = "correct-horse-battery"

# Intents as the example shop would leave them: sent welcome emails (some retried),
# a password reset whose provider timed out (unknown), a refused SMS (failed), a charge
# running right now, and an invoice whose worker died mid-send (stuck).
POPULATE = """
import time
from django_onceonly import check_lock

for n in range(1, 31):
    check_lock(f"welcome_email_{n}", task_name="shop.send_welcome_email",
               metadata={"user_id": n}).complete({"message_id": f"<{n}.welcome@shop.example>", "accepted": True})
for n, retries in ((3, 9), (7, 4), (12, 2), (21, 1)):
    for _ in range(retries):
        check_lock(f"welcome_email_{n}")
for n in range(1, 6):
    check_lock(f"order_receipt_{1000 + n}", scope="shop-7", task_name="shop.send_receipt").complete(
        {"message_id": f"<{1000 + n}.receipt@shop.example>"})
check_lock("pw_reset_7f3a9c", task_name="accounts.send_password_reset",
           metadata={"user_id": 42}).fail(TimeoutError("provider did not answer within 30 s"),
                                          outcome_unknown=True)
check_lock("pw_reset_7f3a9c")
check_lock("sms_otp_5521", task_name="sms.send_otp").fail(
    "InvalidNumber: +44 7700 900000 is not a mobile number")
check_lock("charge_order_1042", scope="shop-7", task_name="billing.charge_card", lease=3600,
           metadata={"order": 1042, "amount": "49.90 EUR"})
check_lock("invoice_2026_0042", task_name="billing.send_invoice", lease=0.05)
time.sleep(0.2)
"""


def browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return (
            "the Python package playwright is missing: pip install playwright (no browser download)"
        )
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: apt-get install -y chromium"
    return None


@dataclass
class Site:
    """The example project, running."""

    url: str
    database: Path

    def status(self, key: str, scope: str = "") -> str | None:
        """The record's status as stored, read from the database file; None if absent."""
        with sqlite3.connect(self.database) as db:
            row = db.execute(
                "SELECT status FROM django_onceonly_idempotencyrecord WHERE scope = ? AND key = ?",
                (scope, key),
            ).fetchone()
        return None if row is None else str(row[0])

    def admin_log(self) -> list[tuple[str, int, str]]:
        with sqlite3.connect(self.database) as db:
            rows = db.execute(
                "SELECT object_repr, action_flag, change_message FROM django_admin_log ORDER BY id"
            ).fetchall()
        return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def example_site(tmp_path: Path) -> Iterator[Site]:
    missing = browser_missing()
    if missing:
        if IN_CI:
            pytest.fail(f"CI=true but the browser test cannot run: {missing}", pytrace=False)
        pytest.skip(missing)
    database = tmp_path / "example.sqlite3"
    env = {
        **os.environ,
        "DEMO_DATABASE": str(database),
        "DEMO_OUTBOX_DIR": str(tmp_path / "outbox"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "DJANGO_SUPERUSER_USERNAME": "oncall",
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
        "DJANGO_SUPERUSER_EMAIL": "oncall@shop.example",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the example project's settings
    manage(env, "migrate", "--noinput")
    manage(env, "createsuperuser", "--noinput")
    manage(env, "shell", "-c", POPULATE)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(MANAGE), "runserver", f"127.0.0.1:{port}", "--noreload"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/admin/login/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the example project's server did not start: {server.stderr.read() if server.stderr else ''}"
                    ) from None
                time.sleep(0.2)
        yield Site(url=url, database=database)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def shoot(page: Any, name: str, *, full_page: bool = False) -> None:
    if SCREENSHOTS:
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / f"{name}.png"), full_page=full_page)


def test_on_call_finds_an_intent_and_releases_it_in_the_browser(example_site: Site) -> None:
    from playwright.sync_api import expect, sync_playwright

    changelist = f"{example_site.url}/admin/django_onceonly/idempotencyrecord/"
    assert example_site.status("pw_reset_7f3a9c") == "unknown"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1680, "height": 1000})
            page.set_default_timeout(20_000)

            # Log in.
            page.goto(changelist)
            page.fill("#id_username", "oncall")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            expect(page.locator("h1")).to_have_text("Sent intents")
            page.click("#toggle-nav-sidebar")  # room for the eight columns (it stays closed)
            expect(page.locator(".onceonly-attention")).to_contain_text("1 unknown")
            expect(page.locator(".onceonly-attention")).to_contain_text("1 stuck in progress")
            shoot(page, "admin-changelist")
            page.click("text=Summary")
            expect(page.locator("h1")).to_have_text("Sent intents: summary")
            expect(page.locator("#onceonly-top-keys tbody tr").first).to_contain_text(
                "welcome_email_3"
            )
            shoot(page, "admin-summary", full_page=True)
            page.go_back()

            # A customer says "I never got my password reset": search by the key's start.
            page.fill("#searchbar", "pw_reset_")
            page.press("#searchbar", "Enter")
            expect(page.locator("#result_list tbody tr")).to_have_count(1)
            expect(page.locator("#result_list tbody")).to_contain_text("pw_reset_7f3a9c")

            # Narrow to what needs a person: status unknown.
            page.locator('details[data-filter-title="status"] a', has_text="unknown").click()
            expect(page).to_have_url(re.compile(r"^(?=.*status__exact=unknown)(?=.*q=pw_reset_)"))
            expect(page.locator("#result_list .onceonly-status--unknown")).to_have_count(1)
            shoot(page, "admin-search-and-filter")

            # Open it: what happened, who claimed it, the stored error.
            page.locator("#result_list th.field-key a", has_text="pw_reset_7f3a9c").click()
            expect(page.locator("h1")).to_contain_text("View sent intent")
            expect(page.locator(".field-error_pretty pre")).to_contain_text(
                "TimeoutError: provider did not answer within 30 s"
            )
            expect(page.locator(".field-task_name")).to_contain_text("accounts.send_password_reset")
            expect(page.locator(".field-duplicates_blocked")).to_contain_text("1")
            shoot(page, "admin-detail", full_page=True)

            # Release it through the confirmation page.
            page.click("a.onceonly-release-link")
            expect(page.locator("h1")).to_have_text("Release sent intents?")
            expect(page.locator("#id_confirm_live")).to_have_count(0)  # nothing is running
            shoot(page, "admin-release-confirmation")
            page.click("#onceonly-release-submit")
            expect(page.locator(".messagelist .success")).to_contain_text("Released 1 intent")
            # Back on the list, with the search and the filter kept: now empty.
            expect(page).to_have_url(re.compile(r"status__exact=unknown"))
            expect(page.locator("#result_list tbody tr")).to_have_count(0)
            shoot(page, "admin-released")

            # A running charge: releasing it needs the extra box.
            page.goto(f"{changelist}?condition=running")
            page.locator("#result_list th.field-key a", has_text="charge_order_1042").click()
            page.click("a.onceonly-release-link")
            expect(page.locator(".onceonly-confirm-live")).to_contain_text("live lease")
            shoot(page, "admin-release-live")
            page.click("#onceonly-release-submit")
            expect(page.locator(".messagelist .warning", has_text="left alone")).to_have_count(1)
            assert example_site.status("charge_order_1042", scope="shop-7") == "in_progress"
            page.goto(f"{changelist}?condition=running")
            page.locator("#result_list th.field-key a", has_text="charge_order_1042").click()
            page.click("a.onceonly-release-link")
            page.check("#id_confirm_live")
            page.click("#onceonly-release-submit")
            expect(page.locator(".messagelist .success")).to_contain_text("Released 1 intent")
        finally:
            browser.close()

    # The database, read directly: both released, nothing else touched, both logged.
    assert example_site.status("pw_reset_7f3a9c") is None
    assert example_site.status("charge_order_1042", scope="shop-7") is None
    assert example_site.status("sms_otp_5521") == "failed"
    assert example_site.status("invoice_2026_0042") == "in_progress"
    assert example_site.status("welcome_email_3") == "completed"
    log = example_site.admin_log()
    assert [(repr_, flag) for repr_, flag, _ in log] == [
        ("pw_reset_7f3a9c", 3),
        ("shop-7:charge_order_1042", 3),
    ]
    assert "status was unknown" in log[0][2]
    assert "status was in_progress" in log[1][2]
