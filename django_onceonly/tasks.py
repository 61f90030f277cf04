"""Maintenance jobs, Celery tasks when Celery is installed (plain functions otherwise).

- ``django_onceonly.tasks.purge_expired``: delete expired records in batches.
- ``django_onceonly.tasks.sync_redis_audit``: copy ``RedisStore`` records to the
  ``IdempotencyRecord`` table (the admin's audit trail); run it every few seconds.
- ``django_onceonly.tasks.resolve_unknown``: run the tasks' resolvers over ``unknown``
  intents (``manage.py onceonly_resolve``); run it every few minutes.
- ``django_onceonly.tasks.relay_outbox``: publish the outbox rows a crash or a broker
  outage left behind (``onceonly_relay`` as a beat task); run it every few seconds.
"""

from __future__ import annotations

from typing import Any

from .conf import conf


def _purge_expired(batch_size: int = 1000, dry_run: bool = False) -> int:
    """Delete expired records of ``ONCEONLY_DATABASE`` in batches; return how many."""
    from .models import IdempotencyRecord
    from .outbox import purge_published

    records = IdempotencyRecord.objects.using(conf.ONCEONLY_DATABASE)
    count = records.purge_expired(batch_size=batch_size, dry_run=dry_run)
    # Published outbox rows go with the records (pending ones always stay).
    purge_published(batch_size=batch_size, dry_run=dry_run)
    return count


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


def _relay_outbox(
    batch_size: int = 100, max_seconds: float = 50.0, app: Any = None
) -> dict[str, Any]:
    """Publish pending outbox rows until none is due or ``max_seconds`` have passed."""
    from .outbox import drain

    report = drain(app=app, batch_size=batch_size, time_limit=max_seconds)
    return {"published": report.published, "failed": report.failed, "error": report.error}


relay_outbox: Any
try:
    from celery import shared_task as _shared_task
except ImportError:
    relay_outbox = _relay_outbox
else:
    # Several beats at once are safe: each row is taken with SKIP LOCKED (one relay on
    # SQLite). Bound, so the rows are published through the app that runs the task.
    @_shared_task(bind=True, name="django_onceonly.tasks.relay_outbox", ignore_result=True)
    def relay_outbox(self: Any, batch_size: int = 100, max_seconds: float = 50.0) -> dict[str, Any]:
        return _relay_outbox(batch_size=batch_size, max_seconds=max_seconds, app=self.app)
