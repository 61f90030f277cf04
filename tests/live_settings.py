"""Settings of the API server process that ``tests/live_server.py`` starts.

The test settings, pointed at the test databases pytest-django created for the session
(their names come in the environment), with the store the test asked for.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import CACHES, DATABASES, REDIS_TEST_CACHE

DATABASES["default"]["NAME"] = os.environ["ONCEONLY_LIVE_DEFAULT_NAME"]
for _alias in ("postgres", "mariadb"):
    _name = os.environ.get(f"ONCEONLY_LIVE_{_alias.upper()}_NAME")
    if _alias in DATABASES and _name:
        DATABASES[_alias]["NAME"] = _name
if REDIS_TEST_CACHE in CACHES:
    CACHES[REDIS_TEST_CACHE]["KEY_PREFIX"] = os.environ["ONCEONLY_LIVE_REDIS_PREFIX"]

ONCEONLY_STORE = os.environ["ONCEONLY_LIVE_STORE"]
ONCEONLY_DATABASE = os.environ["ONCEONLY_LIVE_DATABASE"]
ONCEONLY_REDIS_CACHE = REDIS_TEST_CACHE
# Bigger results than this are refused: the 413 test sends one.
ONCEONLY_MAX_RESULT_BYTES = 4096
LOGGING = {"version": 1, "disable_existing_loggers": False}
