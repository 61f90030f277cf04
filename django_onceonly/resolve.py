"""Resolving ``unknown`` intents by asking the provider what became of them.

An intent is ``unknown`` when its run may or may not have reached the provider (a
timeout after the provider may have accepted, a crash, a lease that ended under
``ONCEONLY_AFTER_LEASE = "hold"``). A *resolver* is a function the task declares
(``OnceTask(once_resolve=...)``) that looks the intent up at the provider, typically by
the key the task passed as the provider's own idempotency key, and answers with a
:class:`Resolution`:

- :meth:`Resolution.sent`: the provider has it; the record is completed with ``result``
  and duplicates get that result from then on;
- :meth:`Resolution.not_sent`: the provider never got it; the record is released, so the
  next attempt runs the work;
- :meth:`Resolution.unknown`: the provider cannot tell (yet); the record stays for a
  person, with the reason in its error text.

:func:`resolve_unknown` runs the resolvers over the ``unknown`` records (and, under
``"hold"``, the ``in_progress`` records whose lease has ended). ``manage.py
onceonly_resolve`` and the beat task ``django_onceonly.tasks.resolve_unknown`` call it.
Each action is a write fenced by the record's owner token, as the owner's own would be:
if anything changed the record since it was read (a person released it, a claim took it
over), the action writes nothing and the record is counted as ``changed``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from django.db.models import Q
from django.utils import timezone

from .conf import conf
from .encoding import encode_error, encode_result
from .exceptions import LockLost
from .rules import Status, lease_is_stale
from .stores import Record, get_store

logger = logging.getLogger("django_onceonly")

Outcome = Literal["sent", "not_sent", "unknown"]
RESOLVER_NOTE = " | resolver: "
Resolver = Callable[[Record], "Resolution"]


@dataclass(frozen=True)
class Resolution:
    """What a resolver found out. Build it with :meth:`sent`, :meth:`not_sent` or :meth:`unknown`."""

    outcome: Outcome
    result: Any = None
    reason: str = ""

    @classmethod
    def sent(cls, result: Any = None) -> Resolution:
        """The provider has the intent: complete the record with ``result`` (JSON)."""
        return cls("sent", result=result)

    @classmethod
    def not_sent(cls, reason: str = "") -> Resolution:
        """The provider never got it: release the record so that the work runs again."""
        return cls("not_sent", reason=reason)

    @classmethod
    def unknown(cls, reason: str) -> Resolution:
        """The provider cannot tell: leave the record for a person, with ``reason``."""
        return cls("unknown", reason=reason)


@dataclass
class ResolveReport:
    """What one pass did: keys by what happened to them."""

    sent: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # the provider could not tell
    failed: list[str] = field(default_factory=list)  # the resolver raised or answered badly
    changed: list[str] = field(default_factory=list)  # someone acted on it meanwhile
    no_resolver: list[str] = field(default_factory=list)

    @property
    def examined(self) -> int:
        return sum(
            len(keys)
            for keys in (
                self.sent,
                self.released,
                self.left,
                self.failed,
                self.changed,
                self.no_resolver,
            )
        )


def resolvers_from_celery(app: Any = None) -> dict[str, Resolver]:
    """The ``once_resolve`` of every registered ``OnceTask`` of ``app`` (default: current)."""
    try:
        from celery import current_app
    except ImportError:  # no [celery] extra: no task can declare a resolver
        return {}
    tasks = (app or current_app).tasks
    found: dict[str, Resolver] = {}
    for name, task in list(tasks.items()):
        resolver = getattr(type(task), "once_resolve", None)
        if callable(resolver):
            found[name] = resolver
    return found


def candidates(*, now: dt.datetime | None = None, using: str | None = None) -> Iterable[Record]:
    """Records a resolver may settle: ``unknown`` ones, and stale leases under ``"hold"``.

    They are found in the ``IdempotencyRecord`` table (with ``RedisStore``, its audit
    copy), then read again from the store itself, which has the last word.
    """
    from .models import IdempotencyRecord

    now = now or timezone.now()
    wanted = Q(status=Status.UNKNOWN)
    if conf.ONCEONLY_AFTER_LEASE == "hold":
        wanted |= Q(status=Status.IN_PROGRESS, lease_expires_at__lte=now)
    rows = (
        IdempotencyRecord.objects.using(using or conf.ONCEONLY_DATABASE)
        .filter(wanted)
        .order_by("created_at")
        .values_list("scope", "key")
    )
    store = get_store()
    for scope, key in rows.iterator():
        record = store.get(scope, key)
        if record is not None and _awaits_resolution(record, now):
            yield record


def _awaits_resolution(record: Record, now: dt.datetime) -> bool:
    if record.status == Status.UNKNOWN:
        return True
    return conf.ONCEONLY_AFTER_LEASE == "hold" and lease_is_stale(
        record.status, record.lease_expires_at, now
    )


def resolve_unknown(
    *,
    resolvers: Mapping[str, Resolver] | None = None,
    limit: int | None = None,
    dry_run: bool = False,
) -> ResolveReport:
    """Run the resolvers over the records awaiting one; return what happened.

    ``resolvers`` maps a task name (the record's ``task_name``) to its resolver; by
    default, the ``once_resolve`` of the current Celery app's tasks. With ``dry_run``
    the resolvers are asked and nothing is written.
    """
    table = resolvers if resolvers is not None else resolvers_from_celery()
    report = ResolveReport()
    now = timezone.now()
    for record in candidates(now=now):
        if limit is not None and report.examined >= limit:
            break
        resolver = table.get(record.task_name)
        if resolver is None:
            report.no_resolver.append(record.key)
            continue
        try:
            resolution = resolver(record)
            if not isinstance(resolution, Resolution):
                raise TypeError(
                    f"resolver for {record.task_name!r} returned {resolution!r}, not a Resolution"
                )
            if dry_run:
                _bucket(report, resolution).append(record.key)
                continue
            _apply(record, resolution)
        except LockLost:
            report.changed.append(record.key)
            continue
        except Exception as exc:
            # One provider hiccup must not stop the pass; the record waits for the next.
            logger.warning(
                "django-onceonly: resolver for key %r (task %s) failed: %s",
                record.key,
                record.task_name,
                exc,
            )
            report.failed.append(record.key)
            continue
        _bucket(report, resolution).append(record.key)
        logger.info(
            "django-onceonly: resolved key %r (scope %r): %s %s",
            record.key,
            record.scope,
            resolution.outcome,
            resolution.reason,
        )
    return report


def _bucket(report: ResolveReport, resolution: Resolution) -> list[str]:
    return {"sent": report.sent, "not_sent": report.released, "unknown": report.left}[
        resolution.outcome
    ]


def _apply(record: Record, resolution: Resolution) -> None:
    """Write what ``resolution`` says, fenced by the record's owner token."""
    store = get_store()
    now = timezone.now()
    if resolution.outcome == "not_sent":
        store.release(record.scope, record.key, record.owner_token)
        return
    if resolution.outcome == "sent":
        ttl = conf.ONCEONLY_TTL
        store.finish(
            record.scope,
            record.key,
            record.owner_token,
            status=Status.COMPLETED,
            result_json=encode_result(resolution.result),
            error="",
            now=now,
            expires_at=None if ttl is None else now + dt.timedelta(seconds=float(ttl)),
        )
        return
    reason = encode_error(resolution.reason or "the provider could not tell")
    # Keep the original error; the resolver's latest reason replaces its previous one.
    original = record.error.split(RESOLVER_NOTE)[0]
    store.finish(
        record.scope,
        record.key,
        record.owner_token,
        status=Status.UNKNOWN,
        result_json=None,
        error=f"{original}{RESOLVER_NOTE}{reason}",
        now=now,
        expires_at=None,
    )
