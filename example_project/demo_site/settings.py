"""Settings of the example shop: SQLite, a broker in files, mail over SMTP to 127.0.0.1.

Everything has a default that works on a fresh machine; the environment changes it
(``bin/demo`` sets these for its worker, a test sets them to keep its files apart):

- ``DEMO_DATABASE``: the SQLite file (default ``example_project/db.sqlite3``).
- ``DEMO_OUTBOX_DIR``: the demo's working folder: the broker's message files, task
  results, the SMTP server's mailboxes, ``report.json`` (default ``example_project/outbox``).
- ``REDIS_URL``: when set, Redis is the broker and ``RedisStore`` keeps the records
  (``DEMO_BROKER`` = ``filesystem`` | ``redis`` and ``DEMO_STORE`` = ``database`` | ``redis``
  choose each one apart); every key goes under ``DEMO_REDIS_PREFIX``.
- ``DEMO_SMTP_PORT``, ``DEMO_SMTP_TIMEOUT``: where the mail goes, how long the sender waits.
- ``DEMO_AFTER_LEASE``: ``ONCEONLY_AFTER_LEASE`` (default ``"hold"``, at-most-once).
"""

from __future__ import annotations

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-onceonly-example-not-secret"
DEBUG = True
# "testserver" is the host of Django's test client, which the demo signs users up with.
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_onceonly",
    "shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "demo_site.urls"
WSGI_APPLICATION = "demo_site.wsgi.application"
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
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/admin/login/"

# The demo process and two worker children write to one SQLite file: wait for the write
# lock instead of failing with "database is locked", and use WAL so readers never block
# the writer. Django 5.1+ runs init_command on every connection; on 4.2 shop/apps.py does.
_sqlite_options: dict[str, object] = {"timeout": 30}
if django.VERSION >= (5, 1):
    _sqlite_options["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    _sqlite_options["transaction_mode"] = "IMMEDIATE"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DATABASE", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": _sqlite_options,
    }
}

OUTBOX_DIR = Path(os.environ.get("DEMO_OUTBOX_DIR", str(BASE_DIR / "outbox")))

# -- mail: Django's own SMTP backend, to the demo's SMTP server ------------------------
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = int(os.environ.get("DEMO_SMTP_PORT", "1025"))
# How long the sender waits for each answer of the server. An answer that comes later
# is the ambiguous case: the server may have accepted the message already.
EMAIL_TIMEOUT = float(os.environ.get("DEMO_SMTP_TIMEOUT", "1.0"))
DEFAULT_FROM_EMAIL = "shop@shop.example"

# -- Redis, when REDIS_URL says where ------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_PREFIX = os.environ.get("DEMO_REDIS_PREFIX", "onceonly-demo")
DEMO_STORE = os.environ.get("DEMO_STORE") or ("redis" if REDIS_URL else "database")
DEMO_BROKER = os.environ.get("DEMO_BROKER") or ("redis" if REDIS_URL else "filesystem")

CACHES: dict[str, dict[str, object]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
if REDIS_URL:
    CACHES["onceonly"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_PREFIX,
    }

# -- django-onceonly ---------------------------------------------------------------------
if DEMO_STORE == "redis":
    ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    ONCEONLY_REDIS_CACHE = "onceonly"
else:
    ONCEONLY_STORE = "django_onceonly.stores.DatabaseStore"
# An email must not go out twice: a claim whose worker died turns "unknown" (a person
# decides) rather than being taken over by the next attempt.
ONCEONLY_AFTER_LEASE = os.environ.get("DEMO_AFTER_LEASE", "hold")

# -- Celery (demo_site/celery.py reads every CELERY_* name) ------------------------------
if DEMO_BROKER == "redis":
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "global_keyprefix": f"{REDIS_PREFIX}:celery:"
    }
else:
    # kombu's filesystem transport: each message is a file; no server to run. (Its
    # writes made atomic: see demo_site/broker.py.)
    _broker = OUTBOX_DIR / "broker"
    for _folder in ("messages", "control", "processed"):
        (_broker / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT = "demo_site.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker / "messages"),
        "data_folder_out": str(_broker / "messages"),
        "control_folder": str(_broker / "control"),
        "processed_folder": str(_broker / "processed"),
        "polling_interval": 0.05,
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Results as files too: the demo waits on them, nothing else needs them.
(OUTBOX_DIR / "results").mkdir(parents=True, exist_ok=True)
CELERY_RESULT_BACKEND = f"file://{(OUTBOX_DIR / 'results').as_posix()}"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
# The plain and at-least-once versions of the shop's tasks that the demo compares, each
# on a queue of its own (the shop's own tasks use the default queue, "celery").
CELERY_IMPORTS = ["shop.demo.variants"]
CELERY_TASK_ROUTES = {
    "demo.plain.*": {"queue": "demo-plain"},
    "demo.at_least_once.*": {"queue": "demo-reclaim"},
}

# Which tasks the shop's views enqueue (a module or an object with send_welcome_email and
# send_password_reset); the demo swaps in the plain ones to show what they do.
SHOP_EMAIL_TASKS = "shop.tasks"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        # Every duplicate blocked is logged; the demo's report counts them instead.
        "django_onceonly": {"handlers": ["console"], "level": "WARNING"},
        "mail.log": {"level": "CRITICAL"},
    },
}
