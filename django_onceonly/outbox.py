"""Durable enqueue: a task published if and only if the caller's transaction commits.

```python
with transaction.atomic():
    user = User.objects.create(...)
    send_welcome_email.enqueue(user.pk)  # or outbox.enqueue(send_welcome_email, user.pk)
```

The transactional outbox, in three parts:

1. :func:`enqueue` writes an :class:`~django_onceonly.models.OutboxMessage` row in the
   caller's transaction on ``ONCEONLY_DATABASE`` (the row commits or rolls back with
   the caller's data) and registers the *fast path* with ``transaction.on_commit``.
2. The fast path publishes right after the commit; a thread marks the rows published
   in batches (one ``UPDATE`` per half second, not a second commit per enqueue). The
   relay leaves rows younger than :data:`RELAY_MIN_AGE` alone, so it does not publish
   what the fast path has just published.
3. The relay (:func:`relay`, :func:`drain`, :func:`relay_forever`; ``manage.py
   onceonly_relay`` and the beat task ``django_onceonly.tasks.relay_outbox``) publishes
   the rows a crash or a broker outage left behind. Several relays share the work
   through ``SKIP LOCKED``; on SQLite, which has no row locks, run one relay.

Publishing is at least once: a row whose process died after the broker accepted the
message and before the mark was written (or whose mark came later than
``RELAY_MIN_AGE``) is published again by the relay. Both copies carry the
same task id, and an ``OnceTask`` runs its body once per intent, so the effect is once.

Celery is imported only inside the functions that publish, so this module (and the
system check it registers) loads without the ``[celery]`` extra.

One module of about 600 lines, longer than the house's usual 400: enqueue, the fast
path, its marks and the relay are one protocol over one row's life (the relay's
minimum age exists because of the marks' delay), and reading them side by side is how
that protocol is checked.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import inspect
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from django.core.checks import CheckMessage, Error, register
from django.db import DatabaseError, connections, transaction
from django.db.models import F
from django.utils import timezone

from .conf import conf
from .models import OutboxMessage
from .rules import MAX_SECONDS, seconds

if TYPE_CHECKING:
    from celery import Celery, Task
    from celery.result import AsyncResult

__all__ = [
    "OutboxHealth",
    "RelayReport",
    "drain",
    "enqueue",
    "flush",
    "outbox_health",
    "purge_published",
    "relay",
    "relay_forever",
]

logger = logging.getLogger("django_onceonly")

# The fast path's marks are written in batches this often (seconds), by one thread.
MARK_INTERVAL = 0.5
# The relay leaves rows younger than this (seconds) to the fast path: it publishes them
# within milliseconds and its mark follows within MARK_INTERVAL.
RELAY_MIN_AGE = 5.0
# The relay publishes with a short retry policy of its own (one reconnect, for a pooled
# connection the broker dropped) and backs off between passes while the broker is down.
RELAY_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
# A pass stops after this many failed publishes in a row: the broker is down.
RELAY_FAILURES_TO_STALL = 2
ERROR_CHARS = 2000


# -- enqueue ----------------------------------------------------------------------------


def enqueue(
    task: Task[..., Any],
    *args: Any,
    countdown: float | None = None,
    eta: dt.datetime | None = None,
    queue: str | None = None,
    **kwargs: Any,
) -> AsyncResult[Any]:
    """Publish ``task(*args, **kwargs)`` if and only if the current transaction commits.

    Inside ``transaction.atomic(using=ONCEONLY_DATABASE)`` an outbox row is written in
    that transaction and the task is published right after the commit; if the
    transaction rolls back nothing is published. Outside a transaction on that database
    the row is written in a transaction of its own and published at once. If the process
    dies or the broker is down after the commit, the relay publishes it later.

    ``countdown``, ``eta`` and ``queue`` are ``apply_async``'s options (a countdown counts
    from now, not from the publish). The arguments must be JSON-serialisable as kombu
    encodes them (``datetime``, ``UUID`` and ``Decimal`` included); anything else raises
    ``kombu.exceptions.EncodeError`` and writes nothing. Returns the ``AsyncResult`` of
    the task id the message will carry, whoever publishes it.
    """
    alias = conf.ONCEONLY_DATABASE
    message = _message(task, args, kwargs, countdown=countdown, eta=eta, queue=queue)
    if transaction.get_connection(alias).in_atomic_block:
        _write(task, message, alias)
    else:
        with transaction.atomic(using=alias):
            _write(task, message, alias)
    return task.AsyncResult(message.task_id)


def _message(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    countdown: Any,
    eta: Any,
    queue: Any,
) -> OutboxMessage:
    """The row to write, after every check that can refuse the call."""
    from kombu.exceptions import EncodeError
    from kombu.utils.json import dumps

    name = getattr(task, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"enqueue() needs a registered Celery task, not {task!r}")
    _check_options(task, {"countdown": countdown, "eta": eta, "queue": queue})
    # As apply_async does (task.typing): a call the task cannot take fails here, inside
    # the caller's transaction, rather than in the worker after the commit.
    header = getattr(task, "__header__", None) if getattr(task, "typing", False) else None
    if header is not None:
        header(*args, **kwargs)
    identity = getattr(task, "_once_identity", None)
    if identity is not None:
        identity(args, kwargs)  # an OnceTask's key: InvalidKey here, never in the relay
    try:
        payload = dumps({"args": list(args), "kwargs": kwargs})
    except (TypeError, ValueError) as exc:
        raise EncodeError(
            f"cannot enqueue {name}: its arguments must be JSON-serialisable "
            f"(as kombu encodes them): {exc}"
        ) from exc
    return OutboxMessage(
        task_name=name,
        task_id=str(uuid.uuid4()),
        payload=payload,
        queue=queue or "",
        eta=_eta(eta, countdown),
    )


def _check_options(task: Task[..., Any], given: dict[str, Any]) -> None:
    run = getattr(task, "_orig_run", None) or getattr(task, "run", None)
    try:
        parameters = inspect.signature(run).parameters if run is not None else {}
    except (TypeError, ValueError):
        parameters = {}
    for option, value in given.items():
        if value is not None and option in parameters:
            raise TypeError(
                f"{task.name} has a parameter named {option!r}, which enqueue() takes as "
                "the apply_async option; rename the parameter or pass it positionally"
            )
    countdown, eta, queue = given["countdown"], given["eta"], given["queue"]
    if countdown is not None and eta is not None:
        raise TypeError("enqueue() takes countdown or eta, not both")
    if countdown is not None and (
        isinstance(countdown, bool)
        or not isinstance(countdown, (int, float))
        or not math.isfinite(countdown)
        or countdown > MAX_SECONDS
    ):
        raise ValueError(f"countdown must be a finite number of seconds, not {countdown!r}")
    if eta is not None and not isinstance(eta, dt.datetime):
        raise TypeError(f"eta must be a datetime, not {eta!r}")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise TypeError(f"queue must be a non-empty string, not {queue!r}")


def _eta(eta: dt.datetime | None, countdown: float | None) -> dt.datetime | None:
    if countdown is not None:
        return timezone.now() + dt.timedelta(seconds=max(0.0, float(countdown)))
    if eta is not None and timezone.is_naive(eta):
        return eta.replace(tzinfo=dt.UTC)  # Celery reads a naive ETA as UTC
    return eta


def _write(task: Task[..., Any], message: OutboxMessage, alias: str) -> None:
    message.save(using=alias, force_insert=True)
    # robust: the caller's transaction has committed by then; a failure here must not
    # look like a failed commit (the relay publishes the row).
    transaction.on_commit(partial(_publish_now, task, message, alias), using=alias, robust=True)


# -- publishing -------------------------------------------------------------------------


def _options(message: OutboxMessage) -> dict[str, Any]:
    options: dict[str, Any] = {"task_id": message.task_id}
    if message.queue:
        options["queue"] = message.queue
    if message.eta is not None:
        options["eta"] = message.eta
    return options


def _decode(message: OutboxMessage) -> tuple[tuple[Any, ...], dict[str, Any]]:
    from kombu.utils.json import loads

    body = loads(message.payload)
    return tuple(body["args"]), dict(body["kwargs"])


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]


def _record_failure(alias: str, pks: Sequence[int], exc: BaseException) -> None:
    OutboxMessage.objects.using(alias).filter(pk__in=pks).update(
        attempts=F("attempts") + 1, last_attempt_at=timezone.now(), last_error=_describe(exc)
    )


def _publish_now(task: Task[..., Any], message: OutboxMessage, alias: str) -> None:
    """The fast path: publish a committed row at once; its mark follows in a batch.

    The caller pays for the publish alone. Marking the row in the same breath would cost
    a second commit (a second disk flush) per enqueue; :data:`_marks` writes the marks of
    every row this process published, one ``UPDATE`` per database each
    :data:`MARK_INTERVAL`. A mark lost to a crash, or later than :data:`RELAY_MIN_AGE`,
    lets the relay publish the row again, with the same task id.
    """
    try:
        # The arguments as the row holds them, as the relay would publish them: the
        # caller may have changed its own objects since the call.
        args, kwargs = _decode(message)
        task.apply_async(args, kwargs, **_options(message))
    except Exception as exc:
        # The row stays pending: the relay publishes it. The caller's commit stands.
        logger.warning(
            "django-onceonly: could not publish %s[%s] after the commit; the relay will: %s",
            message.task_name,
            message.task_id,
            exc,
        )
        try:
            _record_failure(alias, [message.pk], exc)
        except DatabaseError:
            logger.exception("django-onceonly: could not record the publish error")
    else:
        _marks.add(alias, message.pk)


class _Marks:
    """The rows this process published by the fast path, marked in batches by a thread.

    One daemon thread per process (started on first use, again in a forked child) wakes
    every :data:`MARK_INTERVAL` seconds and marks what was published since, with its own
    database connection, closed when ``CONN_MAX_AGE`` says so. :func:`flush` marks at
    once; it runs at interpreter exit too.
    """

    # Beyond this many unmarked rows (the database is down), the oldest marks are
    # dropped: the relay will publish those rows again, which is harmless.
    LIMIT = 100_000

    def __init__(self) -> None:
        self._pending: dict[str, list[int]] = {}
        self._mutex = threading.Lock()
        self._flushing = threading.Lock()
        self._pid = 0

    def add(self, alias: str, pk: int) -> None:
        with self._mutex:
            if self._pid != os.getpid():
                # A forked child inherits neither the thread nor its parent's marks.
                self._pending = {}
                self._pid = os.getpid()
                threading.Thread(
                    target=self._run, name="onceonly-outbox-marks", daemon=True
                ).start()
                _flush_when_the_pool_process_ends()
            self._pending.setdefault(alias, []).append(pk)

    def _run(self) -> None:
        while True:
            time.sleep(MARK_INTERVAL)
            aliases = list(self._pending)
            self.flush()
            for alias in aliases:
                connections[alias].close_if_unusable_or_obsolete()

    def flush(self) -> int:
        """Mark every row this process has published; return how many were marked."""
        with self._flushing:
            with self._mutex:
                pending, self._pending = self._pending, {}
            marked = 0
            for alias, pks in pending.items():
                try:
                    for start in range(0, len(pks), 1000):
                        marked += (
                            OutboxMessage.objects.using(alias)
                            .filter(pk__in=pks[start : start + 1000])  # by key, as the relay
                            .update(published_at=timezone.now())
                        )
                except DatabaseError as exc:
                    logger.warning("django-onceonly: could not mark outbox rows published: %s", exc)
                    with self._mutex:
                        kept = pks + self._pending.get(alias, [])
                        self._pending[alias] = kept[-self.LIMIT :]
            return marked


_marks = _Marks()
atexit.register(_marks.flush)


def _flush_on_signal(**kwargs: Any) -> None:
    _marks.flush()


def _flush_when_the_pool_process_ends() -> None:
    # A Celery pool process (a task that enqueues) ends with os._exit, which skips
    # atexit: its last marks would be lost and the relay would publish those rows again.
    from celery import signals

    signals.worker_process_shutdown.connect(
        _flush_on_signal, weak=False, dispatch_uid="django_onceonly.outbox.marks"
    )


def flush() -> int:
    """Mark the rows this process published by the fast path now (tests, shutdown hooks)."""
    return _marks.flush()


def _publish_row(app: Celery, message: OutboxMessage) -> None:
    args, kwargs = _decode(message)
    options = {**_options(message), "retry_policy": RELAY_RETRY_POLICY}
    task = app.tasks.get(message.task_name)
    if task is not None:
        # Through the task, so its routing, serializer and OnceTask's key header apply.
        task.apply_async(args, kwargs, **options)
    else:
        app.send_task(message.task_name, args, kwargs, **options)


# -- the relay --------------------------------------------------------------------------


@dataclasses.dataclass
class RelayReport:
    """What one or more relay passes did."""

    published: int = 0
    failed: int = 0
    # True when a pass stopped early: the broker (or the database) looks down.
    stalled: bool = False
    error: str = ""

    def __iadd__(self, other: RelayReport) -> RelayReport:
        self.published += other.published
        self.failed += other.failed
        self.stalled = self.stalled or other.stalled
        self.error = other.error or self.error
        return self


def _current_app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from celery import current_app

    found: Celery = current_app._get_current_object()  # type: ignore[attr-defined]
    return found


def relay(
    *,
    app: Celery | None = None,
    batch_size: int = 100,
    min_age: float = RELAY_MIN_AGE,
    using: str | None = None,
) -> RelayReport:
    """One pass: publish up to ``batch_size`` pending rows older than ``min_age`` seconds.

    Oldest first. On PostgreSQL and MariaDB the rows are taken with ``SELECT ... FOR
    UPDATE SKIP LOCKED`` and held until they are marked published, so any number of
    relays (and fast paths) publish each row once; on SQLite run a single relay. A pass
    stops after two failed publishes in a row (``stalled``): the broker is down.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    alias = using or conf.ONCEONLY_DATABASE
    celery_app = _current_app(app)
    cutoff = timezone.now() - dt.timedelta(seconds=max(0.0, min_age))
    pending = (
        OutboxMessage.objects.using(alias)
        .pending()
        .filter(created_at__lte=cutoff)
        # By id alone: MariaDB then walks the primary key and locks only the rows it
        # returns. A sort (even by an indexed column the optimiser skips for a small
        # table) makes a locking read lock every pending row, and the other relays
        # find nothing to take.
        .order_by("id")
    )
    if not connections[alias].features.has_select_for_update_skip_locked:
        return _relay_rows(celery_app, alias, list(pending[:batch_size]))
    with transaction.atomic(using=alias):
        rows = list(pending.select_for_update(skip_locked=True)[:batch_size])
        return _relay_rows(celery_app, alias, rows)


def _relay_rows(app: Celery, alias: str, rows: list[OutboxMessage]) -> RelayReport:
    report = RelayReport()
    published: list[int] = []
    failures_in_a_row = 0
    for message in rows:
        try:
            _publish_row(app, message)
        except Exception as exc:
            report.failed += 1
            report.error = _describe(exc)
            _record_failure(alias, [message.pk], exc)
            failures_in_a_row += 1
            if failures_in_a_row >= RELAY_FAILURES_TO_STALL:
                report.stalled = True
                break
            continue
        failures_in_a_row = 0
        published.append(message.pk)
    if published:
        # By primary key alone: a condition on published_at may let MariaDB scan its
        # index and wait for rows another relay holds, and two relays doing so deadlock.
        OutboxMessage.objects.using(alias).filter(pk__in=published).update(
            published_at=timezone.now()
        )
    report.published = len(published)
    if report.failed:
        logger.warning(
            "django-onceonly: relay published %d, failed %d; last error: %s",
            report.published,
            report.failed,
            report.error,
        )
    return report


def drain(
    *,
    app: Celery | None = None,
    batch_size: int = 100,
    min_age: float = RELAY_MIN_AGE,
    using: str | None = None,
    time_limit: float | None = None,
    stop: threading.Event | None = None,
) -> RelayReport:
    """Relay passes until the outbox has no more due rows, it stalls, or time runs out."""
    deadline = None if time_limit is None else time.monotonic() + time_limit
    total = RelayReport()
    while True:
        report = relay(app=app, batch_size=batch_size, min_age=min_age, using=using)
        total += report
        if report.stalled or report.published + report.failed < batch_size:
            return total
        if (stop is not None and stop.is_set()) or (
            deadline is not None and time.monotonic() >= deadline
        ):
            return total


def relay_forever(
    stop: threading.Event,
    *,
    app: Celery | None = None,
    batch_size: int = 100,
    interval: float = 1.0,
    max_backoff: float = 30.0,
    min_age: float = RELAY_MIN_AGE,
    using: str | None = None,
    on_report: Callable[[RelayReport], None] | None = None,
) -> None:
    """Drain every ``interval`` seconds until ``stop`` is set (``onceonly_relay``'s loop).

    While the broker or the database is down, the wait doubles after each pass that
    failed and published nothing, up to ``max_backoff`` seconds, and returns to
    ``interval`` once a pass gets through.
    Setting ``stop`` ends the loop after the pass in progress, never in the middle of one.
    """
    alias = using or conf.ONCEONLY_DATABASE
    backoff = 0.0
    while not stop.is_set():
        try:
            report = drain(app=app, batch_size=batch_size, min_age=min_age, using=alias, stop=stop)
        except DatabaseError as exc:
            logger.warning("django-onceonly: relay cannot reach database %r: %s", alias, exc)
            connections[alias].close()
            report = RelayReport(stalled=True, error=_describe(exc))
        if on_report is not None:
            on_report(report)
        if (report.stalled or report.failed) and not report.published:
            backoff = min(max(backoff * 2, interval), max_backoff)
        else:
            backoff = 0.0
        # The connection is idle until the next pass; let Django close it if it should.
        connections[alias].close_if_unusable_or_obsolete()
        stop.wait(backoff or interval)


# -- purge and monitoring ---------------------------------------------------------------


def purge_published(
    *, batch_size: int = 1000, dry_run: bool = False, using: str | None = None
) -> int:
    """Delete published rows of the outbox in batches; return how many (pending rows stay).

    ``onceonly_purge`` and ``tasks.purge_expired`` call it beside the records' purge.
    """
    rows = OutboxMessage.objects.using(using or conf.ONCEONLY_DATABASE)
    return rows.purge_published(batch_size=batch_size, dry_run=dry_run)


@dataclasses.dataclass(frozen=True)
class OutboxHealth:
    """The outbox as an operator sees it: pending rows, and those past the alert age."""

    pending: int
    late: int
    alert_after: float
    oldest_late: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "late": self.late,
            "alert_after": self.alert_after,
            "oldest_late": self.oldest_late.isoformat() if self.oldest_late else None,
        }

    def describe(self) -> str:
        text = (
            f"Outbox: {self.pending:,} pending; {self.late:,} older than "
            f"{self.alert_after:g} s (ONCEONLY_OUTBOX_ALERT_AFTER)"
        )
        if self.oldest_late is not None:
            text += f", the oldest written {self.oldest_late:%Y-%m-%d %H:%M:%S %Z}"
            text += ": is a relay running, and can it reach the broker?"
        return text


def outbox_health(*, using: str | None = None, alert_after: float | None = None) -> OutboxHealth:
    """Pending rows and those older than ``ONCEONLY_OUTBOX_ALERT_AFTER`` (for the stats)."""
    after = conf.ONCEONLY_OUTBOX_ALERT_AFTER if alert_after is None else alert_after
    rows = OutboxMessage.objects.using(using or conf.ONCEONLY_DATABASE)
    late = rows.older_than(after)
    oldest = late.order_by("id").values_list("created_at", flat=True)
    return OutboxHealth(
        pending=rows.pending().count(),
        late=late.count(),
        alert_after=float(after),
        oldest_late=oldest.first(),
    )


@register()
def check_outbox_alert(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    value = conf.get("ONCEONLY_OUTBOX_ALERT_AFTER")
    try:
        seconds(value, "ONCEONLY_OUTBOX_ALERT_AFTER")
    except ValueError:
        return [
            Error(
                f"ONCEONLY_OUTBOX_ALERT_AFTER={value!r} must be a positive number of seconds, "
                f"at most {MAX_SECONDS} (100 years).",
                id="django_onceonly.E011",
            )
        ]
    return []
