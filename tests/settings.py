"""Settings for the test suite: SQLite always, PostgreSQL and MariaDB when they answer.

In CI (``CI=true``) every server is required; locally, tests for a server that is down
are skipped with the command that starts it (see ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import tempfile
import uuid

from tests.services import IN_CI, SERVICES, is_up

SECRET_KEY = "django-onceonly-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "rest_framework.authtoken",
    "django_onceonly",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
# The service API's tests authenticate as the OnceOnly SDK does (Bearer) and as DRF's
# token authentication does (Token); session and basic stay DRF's defaults.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "django_onceonly.api.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ]
}
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

_SQLITE_DIR = tempfile.mkdtemp(prefix="onceonly-tests-")
# Test runs that share the servers at the same time (several checkouts, CI jobs) each
# need their own test database, or one run's setup drops the other's.
_TEST_DB_NAME = os.environ.get("ONCEONLY_TEST_DB_NAME", "test_onceonly")

DATABASES: dict[str, dict[str, object]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_SQLITE_DIR, "default.sqlite3"),
        # A file, not memory: threads and processes of the races share it.
        "TEST": {"NAME": os.path.join(_SQLITE_DIR, "test_default.sqlite3")},
        "OPTIONS": {"timeout": 30},
    }
}

if IN_CI or is_up("postgres"):
    host, port, _ = SERVICES["postgres"]
    DATABASES["postgres"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("ONCEONLY_TEST_PG_NAME", "test"),
        "USER": os.environ.get("ONCEONLY_TEST_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("ONCEONLY_TEST_PG_PASSWORD", ""),
        "HOST": host,
        "PORT": port,
        "TEST": {"NAME": _TEST_DB_NAME},
    }

if IN_CI or is_up("mariadb"):
    host, port, _ = SERVICES["mariadb"]
    DATABASES["mariadb"] = {
        "ENGINE": "django.db.backends.mysql",
        "NAME": os.environ.get("ONCEONLY_TEST_MARIADB_NAME", "test"),
        "USER": os.environ.get("ONCEONLY_TEST_MARIADB_USER", "root"),
        "PASSWORD": os.environ.get("ONCEONLY_TEST_MARIADB_PASSWORD", ""),
        "HOST": host,
        "PORT": port,
        "OPTIONS": {"charset": "utf8mb4"},
        "TEST": {"NAME": _TEST_DB_NAME, "CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
    }

# RedisStore's tests use a cache alias of their own (the "default" cache stays in memory),
# on a Redis database number of its own, under a prefix unique to this run, so that test
# runs sharing one server never see, or delete, each other's keys.
REDIS_TEST_CACHE = "onceonly"
REDIS_TEST_PREFIX = f"onceonly-test-{uuid.uuid4().hex[:12]}"
CACHES: dict[str, dict[str, object]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
if IN_CI or is_up("redis"):
    host, port, _ = SERVICES["redis"]
    CACHES[REDIS_TEST_CACHE] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://{host}:{port}/13",
        "KEY_PREFIX": REDIS_TEST_PREFIX,
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 5},
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django_onceonly": {"level": "INFO"}},
}
