"""After ``bin/demo``, the admin it points to shows what happened: driven in Chromium.

The demo runs at a small size on scratch files, then ``manage.py demo --serve`` serves
its admin on 127.0.0.1 and the browser logs in with the login the demo printed. It finds
the ``unknown`` records (the emails whose answer timed out) and the duplicates blocked.

With ``ONCEONLY_SCREENSHOTS=1`` it runs the demo at its default size and saves the
screenshots used in ``docs/tutorial.md`` (``docs/images/demo-*.png``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.services import IN_CI
from tests.test_browser_admin import CHROMIUM, CHROMIUM_ARGS, browser_missing, free_port

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "example_project" / "manage.py"
IMAGES = ROOT / "docs" / "images"
SCREENSHOTS = os.environ.get("ONCEONLY_SCREENSHOTS", "") == "1"


@pytest.mark.slow
def test_admin_after_the_demo_shows_unknown_emails_and_duplicates_blocked(tmp_path: Path) -> None:
    missing = browser_missing()
    if missing:
        if IN_CI:
            pytest.fail(f"CI=true but the browser test cannot run: {missing}", pytrace=False)
        pytest.skip(missing)
    from playwright.sync_api import expect, sync_playwright

    env = {
        **os.environ,
        "DEMO_DATABASE": str(tmp_path / "demo.sqlite3"),
        "DEMO_OUTBOX_DIR": str(tmp_path / "outbox"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name in ("DJANGO_SETTINGS_MODULE", "REDIS_URL", "DEMO_STORE", "DEMO_BROKER"):
        env.pop(name, None)
    size = [] if SCREENSHOTS else ["--users", "10"]
    demo = subprocess.run(
        [sys.executable, str(MANAGE), "demo", *size],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert demo.returncode == 0, f"{demo.stdout}\n{demo.stderr}"
    report = json.loads((tmp_path / "outbox" / "report.json").read_text())
    unknown = report["runs"]["hold"]["unknown"]
    assert unknown

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(MANAGE), "demo", "--serve", "--port", str(port)],
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
                        f"bin/demo --serve did not start: {server.stderr.read() if server.stderr else ''}"
                    ) from None
                time.sleep(0.2)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = browser.new_page(viewport={"width": 1680, "height": 1000})
                page.set_default_timeout(20_000)
                # The login the demo printed.
                page.goto(f"{url}/admin/django_onceonly/idempotencyrecord/")
                page.fill("#id_username", "oncall")
                page.fill("#id_password", "oncall-demo")
                page.click("input[type=submit]")
                expect(page.locator("h1")).to_have_text("Sent intents")
                page.click("#toggle-nav-sidebar")
                expect(page.locator(".onceonly-attention")).to_contain_text(
                    f"{len(unknown)} unknown"
                )
                # The emails of double clicks and re-sent messages: duplicates blocked.
                page.click("text=Summary")
                expect(page.locator("h1")).to_have_text("Sent intents: summary")
                if SCREENSHOTS:
                    page.screenshot(path=str(IMAGES / "demo-admin-summary.png"), full_page=True)
                page.go_back()
                # What needs a person: the emails whose answer timed out.
                page.click(".onceonly-attention a")
                expect(page.locator("#result_list tbody tr")).to_have_count(len(unknown))
                for key in unknown:
                    expect(page.locator("#result_list tbody")).to_contain_text(key)
                if SCREENSHOTS:
                    IMAGES.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(IMAGES / "demo-admin.png"))
                page.locator("#result_list th.field-key a").first.click()
                expect(page.locator(".field-error_pretty pre")).to_contain_text(
                    "DeliveryOutcomeUnknown"
                )
                expect(page.locator(".field-task_name")).to_contain_text("shop.send_")
                if SCREENSHOTS:
                    page.screenshot(path=str(IMAGES / "demo-admin-unknown.png"), full_page=True)
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
