"""Settings of the live server that ``tests/test_drf_live.py`` runs (``manage runserver``).

The test process passes the databases pytest-django created for it (``ONCEONLY_DRF_*``),
so that the server and the test read and write the same users and records, and the
store under test.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import CACHES, DATABASES, REDIS_TEST_CACHE

ROOT_URLCONF = "tests.drf_urls"

DATABASES["default"]["NAME"] = os.environ["ONCEONLY_DRF_SQLITE"]
for _alias in ("postgres", "mariadb"):
    if _alias in DATABASES:
        DATABASES[_alias]["NAME"] = os.environ["ONCEONLY_DRF_DB_NAME"]

ONCEONLY_STORE = os.environ["ONCEONLY_DRF_STORE"]
ONCEONLY_DATABASE = os.environ["ONCEONLY_DRF_DATABASE"]
if REDIS_TEST_CACHE in CACHES:
    ONCEONLY_REDIS_CACHE = REDIS_TEST_CACHE
    # The test process's prefix, so that its clean-up deletes the server's keys too.
    CACHES[REDIS_TEST_CACHE]["KEY_PREFIX"] = os.environ["ONCEONLY_DRF_REDIS_PREFIX"]
