"""Prove your own tasks and views idempotent before production does it for you.

Each helper drives your real code against the configured store, the way production
breaks it, and returns a :class:`Report` of what it saw: how often the body (or view)
ran, what each attempt returned, and how many side effects your callback counted.

- :func:`deliver_twice`: the same task message delivered twice at once (at-least-once
  delivery, a webhook re-sent, a double click);
- :func:`crash_after_side_effect`: the run dies after its side effect and before its
  completion, then a retry comes after the lease;
- :func:`store_down`: the store cannot be reached while the task runs;
- :func:`replay_request`: an HTTP request sent again with the same ``Idempotency-Key``.

Side effects are counted by you: pass ``side_effects=``, a callable returning how many
have happened so far (rows in an outbox table, messages in ``django.core.mail.outbox``,
calls your fake provider received). The helpers only read it before and after.

They need a database the test may write to from several threads
(``pytest.mark.django_db(transaction=True)`` or ``TransactionTestCase``). Fixtures for
pytest are in :mod:`django_onceonly.testing.fixtures`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

from django.db import connections
from django.test import override_settings
from django.utils import timezone

from ..exceptions import StoreUnavailable
from ..locks import Lock
from ..stores import BaseStore, ClaimRequest, ClaimResult, Record
from ..stores.database import close_connections


@dataclass
class Report:
    """What a helper saw. ``side_effects`` is ``None`` when no counter was given."""

    scenario: str
    bodies_run: int = 0
    side_effects: int | None = None
    results: list[Any] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    record: Record | None = None

    def __str__(self) -> str:
        effects = "not counted" if self.side_effects is None else str(self.side_effects)
        status = self.record.status if self.record else "no record"
        return (
            f"{self.scenario}: body ran {self.bodies_run} time(s), side effects {effects}, "
            f"record {status}, errors {[type(e).__name__ for e in self.errors]}"
        )


class _BodyCounter:
    """Counts the runs of a task's body by wrapping ``run`` for the helper's duration."""

    def __init__(self) -> None:
        self.count = 0
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def counting(self, task: Any) -> Iterator[None]:
        original = task.run

        @functools.wraps(original)  # keeps the signature keys are derived from
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._guard:
                self.count += 1
            return original(*args, **kwargs)

        task.run = run
        try:
            yield
        finally:
            task.run = original


def _counted(side_effects: Callable[[], int] | None) -> Callable[[], int | None]:
    before = side_effects() if side_effects else 0

    def after() -> int | None:
        return None if side_effects is None else side_effects() - before

    return after


def _identity(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
    key, scope = task._once_identity(tuple(args), dict(kwargs))
    return str(key), str(scope)


def _record(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Record | None:
    from ..stores import get_store

    if not hasattr(task, "_once_identity"):
        return None  # not a OnceTask: nothing records its runs
    key, scope = _identity(task, args, kwargs)
    return get_store().get(scope, key)


def _apply(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """Run one delivery of the task's message in this thread, as a worker would."""
    outcome = task.apply(args=tuple(args), kwargs=dict(kwargs))
    if isinstance(outcome.result, BaseException):
        raise outcome.result
    return outcome.result


def deliver_twice(
    task: Any,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    side_effects: Callable[[], int] | None = None,
) -> Report:
    """Deliver the task's message twice at the same moment, from two threads.

    An idempotent ``OnceTask`` runs its body once: the other delivery returns the stored
    result, or waits (``InProgress`` here, where a worker would retry it later).
    """
    kwargs = dict(kwargs or {})
    report = Report("delivered twice at once")
    counter, count_effects = _BodyCounter(), _counted(side_effects)
    barrier = threading.Barrier(2)
    guard = threading.Lock()

    def deliver() -> None:
        try:
            barrier.wait()
            result = _apply(task, args, kwargs)
            with guard:
                report.results.append(result)
        except BaseException as exc:
            with guard:
                report.errors.append(exc)
        finally:
            close_connections()
            connections.close_all()

    with counter.counting(task):
        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # The one that waited comes back later, as a worker's retry would.
        if report.errors:
            report.results.append(_apply(task, args, kwargs))
    report.bodies_run = counter.count
    report.side_effects = count_effects()
    report.record = _record(task, args, kwargs)
    return report


class _Crash(BaseException):
    """The process dies: raised where the run would have stored its outcome."""


def crash_after_side_effect(
    task: Any,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    side_effects: Callable[[], int] | None = None,
) -> Report:
    """Run the task, kill it after its body and before its completion, then retry it.

    The retry comes after the first run's lease has ended (the clock of django-onceonly
    is moved past it; nothing waits). With ``ONCEONLY_AFTER_LEASE = "reclaim"`` the retry
    runs the body again (the report shows the duplicate side effect your provider's
    idempotency key must absorb); with ``"hold"`` the record turns ``unknown`` and the
    body does not run again.
    """
    kwargs = dict(kwargs or {})
    report = Report("crashed after the side effect, retried after the lease")
    counter, count_effects = _BodyCounter(), _counted(side_effects)
    with counter.counting(task):
        with mock.patch.object(Lock, "complete", side_effect=_Crash), contextlib.suppress(_Crash):
            task.apply(args=tuple(args), kwargs=dict(kwargs), throw=True)
        crashed = _record(task, args, kwargs)
        lease_end = crashed.lease_expires_at if crashed else None
        later = (lease_end or timezone.now()) + dt.timedelta(seconds=1)
        with _clock_at(later):
            try:
                report.results.append(_apply(task, args, kwargs))
            except Exception as exc:
                report.errors.append(exc)
    report.bodies_run = counter.count
    report.side_effects = count_effects()
    report.record = _record(task, args, kwargs)
    return report


@contextlib.contextmanager
def _clock_at(moment: dt.datetime) -> Iterator[None]:
    """django-onceonly's clock (and only its clock) reads ``moment`` and runs on from it."""
    real_now = timezone.now
    started = real_now()

    def now() -> dt.datetime:
        return moment + (real_now() - started)

    # Only the lock layer's view of the clock moves (its module attribute `timezone`),
    # not Django's: the code under test keeps the real time.
    with mock.patch("django_onceonly.locks.timezone", SimpleNamespace(now=now)):
        yield


class UnavailableStore(BaseStore):
    """A store whose backend cannot be reached: every call raises ``StoreUnavailable``."""

    def _down(self) -> StoreUnavailable:
        return StoreUnavailable("the store is down (django_onceonly.testing.kit.store_down)")

    def _claim(self, request: ClaimRequest) -> ClaimResult:
        raise self._down()

    def _finish(self, *args: Any, **kwargs: Any) -> bool:
        raise self._down()

    def _release(self, *args: Any, **kwargs: Any) -> bool:
        raise self._down()

    def _extend(self, *args: Any, **kwargs: Any) -> bool:
        raise self._down()

    def _release_if_unchanged(self, *args: Any, **kwargs: Any) -> bool:
        raise self._down()

    def get(self, scope: str, key: str) -> Record | None:
        raise self._down()

    def force_release(self, scope: str, key: str) -> bool:
        raise self._down()

    def _add_duplicates(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise self._down()


def store_down(
    task: Any,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    side_effects: Callable[[], int] | None = None,
) -> Report:
    """Run the task while the store cannot be reached.

    With the default ``ONCEONLY_ON_STORE_ERROR = "raise"`` the body must not run: the
    task retries (the report's ``errors`` hold the ``Retry`` or the ``StoreUnavailable``).
    """
    kwargs = dict(kwargs or {})
    report = Report("store unavailable")
    counter, count_effects = _BodyCounter(), _counted(side_effects)
    with (
        counter.counting(task),
        override_settings(ONCEONLY_STORE=f"{__name__}.UnavailableStore"),
    ):
        try:
            report.results.append(_apply(task, args, kwargs))
        except BaseException as exc:
            report.errors.append(exc)
    report.bodies_run = counter.count
    report.side_effects = count_effects()
    return report


def replay_request(
    client: Any,
    method: str,
    path: str,
    data: Any = None,
    *,
    key: str = "kit-replay-1",
    side_effects: Callable[[], int] | None = None,
    **extra: Any,
) -> Report:
    """Send one request twice with the same ``Idempotency-Key`` through ``client``.

    ``client`` is Django's or DRF's test client (``APIClient`` for JSON). The second
    answer should be the first one replayed (``Idempotent-Replayed: true``) and the side
    effects should count one. ``results`` holds both responses.
    """
    report = Report("request replayed with the same Idempotency-Key")
    count_effects = _counted(side_effects)
    send = getattr(client, method.lower())
    for _ in range(2):
        response = send(path, data, HTTP_IDEMPOTENCY_KEY=f'"{key}"', **extra)
        report.results.append(response)
    report.bodies_run = sum(1 for r in report.results if r.get("Idempotent-Replayed") != "true")
    report.side_effects = count_effects()
    return report
