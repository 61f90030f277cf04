"""Settings for the example project: SQLite, no server, nothing to configure.

``DEMO_DATABASE`` (a file path) and ``DEMO_OUTBOX_DIR`` (a folder) move the database and
the outbox elsewhere, so a test can run the demo without touching these files.
"""

from __future__ import annotations

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-onceonly-example-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
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

# The demo races many threads and processes on one SQLite file: wait for the write lock
# instead of failing with "database is locked", and use WAL so readers never block the
# writer. Django 5.1+ runs init_command on every connection; on 4.2 shop/apps.py does it.
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

# Every email "sent" becomes one line in <EMAIL_FILE_PATH>/sent.log, written by whichever
# process sent it, so the demo can count what really went out (locmem is per process).
EMAIL_BACKEND = "shop.mail.OutboxBackend"
EMAIL_FILE_PATH = os.environ.get("DEMO_OUTBOX_DIR", str(BASE_DIR / "outbox"))
# How long the "provider" takes to accept an email: the window in which a naive
# check-then-send lets a concurrent retry through.
DEMO_PROVIDER_LATENCY = float(os.environ.get("DEMO_PROVIDER_LATENCY", "0.05"))
DEFAULT_FROM_EMAIL = "shop@example.com"

# django-onceonly needs no settings; these are the defaults, spelled out for the reader.
ONCEONLY_STORE = "django_onceonly.stores.DatabaseStore"
ONCEONLY_TTL = 86400
ONCEONLY_LEASE = 300
