"""Maintenance jobs, Celery tasks when Celery is installed (plain functions otherwise).

- ``django_onceonly.tasks.purge_expired``: delete expired records in batches.
- ``django_onceonly.tasks.sync_redis_audit``: copy ``RedisStore`` records to the
  ``IdempotencyRecord`` table (the admin's audit trail); run it every few seconds.
- ``django_onceonly.tasks.resolve_unknown``: run the tasks' resolvers over ``unknown``
  intents (``manage.py onceonly_resolve``); run it every few minutes.
"""

from __future__ import annotations

from typing import Any

from .conf import conf


def _purge_expired(batch_size: int = 1000, dry_run: bool = False) -> int:
    """Delete expired records of ``ONCEONLY_DATABASE`` in batches; return how many."""
    from .models import IdempotencyRecord

    records = IdempotencyRecord.objects.using(conf.ONCEONLY_DATABASE)
    return records.purge_expired(batch_size=batch_size, dry_run=dry_run)


def _sync_redis_audit(batch_size: int = 1000) -> dict[str, Any]:
    """One pass of ``onceonly_sync``; returns its counts (copied, deleted, pending)."""
    from .stores.audit import sync_audit

    report = sync_audit(batch_size=batch_size)
    return {
        "copied": report.copied,
        "deleted": report.deleted,
        "pending": report.pending,
        "locked_out": report.locked_out,
    }


def _resolve_unknown(limit: int | None = None) -> dict[str, int]:
    """One pass of ``onceonly_resolve``; returns how many records went which way."""
    from .resolve import resolve_unknown as run_resolvers

    report = run_resolvers(limit=limit)
    return {
        "sent": len(report.sent),
        "released": len(report.released),
        "left": len(report.left),
        "failed": len(report.failed),
        "changed": len(report.changed),
        "no_resolver": len(report.no_resolver),
    }


purge_expired: Any
sync_redis_audit: Any
resolve_unknown: Any
try:
    from celery import shared_task
except ImportError:  # the [celery] extra is not installed: plain functions
    purge_expired = _purge_expired
    sync_redis_audit = _sync_redis_audit
    resolve_unknown = _resolve_unknown
else:
    purge_expired = shared_task(name="django_onceonly.tasks.purge_expired", ignore_result=True)(
        _purge_expired
    )
    # Several beats or a slow pass are harmless: sync_audit lets one pass work at a time.
    sync_redis_audit = shared_task(
        name="django_onceonly.tasks.sync_redis_audit", ignore_result=True
    )(_sync_redis_audit)
    # Every write of a pass is fenced by the owner token: overlapping passes are harmless.
    resolve_unknown = shared_task(name="django_onceonly.tasks.resolve_unknown", ignore_result=True)(
        _resolve_unknown
    )
