"""The app a test worker runs: ``celery -A tests.celery.worker worker ...``.

Configured from the environment that ``tests/celery/fixtures.py`` sets.
"""

from __future__ import annotations

import os

from tests.celery.app import make_app

_visibility = os.environ.get("ONCEONLY_TEST_VISIBILITY_TIMEOUT")
tasks = make_app(
    os.environ["ONCEONLY_TEST_BROKER"],
    os.environ["ONCEONLY_TEST_QUEUE"],
    visibility_timeout=float(_visibility) if _visibility else None,
)
app = tasks.app
