"""Django settings of the test workers: the test settings, records on PostgreSQL.

The worker process is started by ``tests/celery/fixtures.py`` with
``ONCEONLY_TEST_PG_NAME`` set to the name of the test database pytest-django created,
so the worker and the test read and write the same records.
"""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

ONCEONLY_STORE = "django_onceonly.stores.DatabaseStore"
ONCEONLY_DATABASE = "postgres"

# The same database behind a TCP proxy that the store-outage test cuts and restores;
# only messages that ask for it (see tests/celery/app.py) use it.
if "postgres" in DATABASES and os.environ.get("ONCEONLY_TEST_OUTAGE_PORT"):
    DATABASES["outage"] = {
        **DATABASES["postgres"],
        "PORT": int(os.environ["ONCEONLY_TEST_OUTAGE_PORT"]),
        "OPTIONS": {"connect_timeout": 2},
    }
