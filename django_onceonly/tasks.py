"""Maintenance jobs. ``purge_expired`` is a Celery task when Celery is installed."""

from __future__ import annotations

from typing import Any

from .conf import conf


def _purge_expired(batch_size: int = 1000, dry_run: bool = False) -> int:
    """Delete expired records of ``ONCEONLY_DATABASE`` in batches; return how many."""
    from .models import IdempotencyRecord

    records = IdempotencyRecord.objects.using(conf.ONCEONLY_DATABASE)
    return records.purge_expired(batch_size=batch_size, dry_run=dry_run)


purge_expired: Any
try:
    from celery import shared_task
except ImportError:  # the [celery] extra is not installed: a plain function
    purge_expired = _purge_expired
else:
    purge_expired = shared_task(name="django_onceonly.tasks.purge_expired", ignore_result=True)(
        _purge_expired
    )
