"""The shop's Celery app, configured from Django's settings (the ``CELERY_*`` names).

A worker runs it with ``celery -A demo_site worker`` from ``example_project/``.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")

app = Celery("demo_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
