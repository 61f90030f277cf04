"""``OnceTask``: a Celery base class whose body runs once per intent.

```python
@app.task(base=OnceTask, bind=True, acks_late=True, once_key="welcome_email_{user_id}")
def send_welcome_email(self, user_id):
    provider.send(..., idempotency_key=self.once.key)
```

How it works, in the order of a task's life:

1. ``apply_async`` derives the key (and scope) from the call's arguments, bound to the
   task's real signature with defaults applied, and puts it in the message headers. It
   is never derived again: retries, redeliveries and waits carry it. A message sent
   without it (``send_task`` by name) gets its key at its first execution.
2. Each execution claims the key with :func:`~django_onceonly.check_lock` before the
   body runs. The owner runs the body and stores its return value; a duplicate returns
   the stored result, or waits (a Celery retry) while the first run is in progress.
3. ``self.retry()`` and ``autoretry_for`` hand the claim over to the retry: the retry
   message carries the owner token and the retry resumes that very claim (the store's
   "Resume" rule), after the lease was extended to cover the countdown. A redelivered
   copy of that retry message finds the claim already handed over and is a duplicate.
4. A lease shorter than the task's hard time limit (or with no time limit at all) is
   extended by a heartbeat thread while the body runs, so only a dead process loses it.
5. When the store is down at the moment the body returns, the outcome is not lost: it
   is published in a message of its own (the ``onceonly_finish`` header, with the owner
   token and the encoded result) that stores it once the store answers again, and never
   runs the body.

Requires the ``[celery]`` extra. The module stays whole past the house's 400 lines: the
claim's life (publish, execute, retry, wait, settle) is one state machine on one class;
the heartbeat lives in :mod:`django_onceonly.heartbeat`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from typing import Any, ClassVar

from celery import Task, signals, states
from celery.exceptions import Reject, Retry, TaskPredicate
from celery.result import AsyncResult, EagerResult
from celery.utils import uuid
from django.utils import timezone

from .conf import conf
from .encoding import encode_result
from .exceptions import (
    DuplicateTask,
    InProgress,
    IntentBlocked,
    InvalidResult,
    LockLost,
    OnceOnlyError,
    ResultTooLarge,
    StoreUnavailable,
)
from .heartbeat import Beat as _Beat
from .heartbeat import heartbeat as _heartbeat
from .keys import make_key, validate_key, validate_scope
from .locks import LOCKED, Lock, check_lock
from .rules import (
    ON_ERROR_CHOICES,
    TASK_ON_DUPLICATE_CHOICES,
    TASK_ON_IN_PROGRESS_CHOICES,
    check_choice,
    optional_seconds,
)
from .stores import duplicates
from .stores.base import COMPLETED, IN_PROGRESS, UNKNOWN

__all__ = ["DuplicateTask", "OnceTask"]

logger = logging.getLogger("django_onceonly")


@signals.worker_process_shutdown.connect(weak=False, dispatch_uid="django_onceonly.duplicates")
def _flush_duplicates(**kwargs: Any) -> None:
    """A pool process that ends writes the duplicate counts it still holds."""
    duplicates.flush()


# Message headers. The key and scope travel with every message of an intent; the token
# only with a retry that resumes its predecessor's claim (or a message claimed at enqueue).
HEADER_KEY = "onceonly_key"
HEADER_SCOPE = "onceonly_scope"
HEADER_TOKEN = "onceonly_token"
# Only on a message that stores the outcome of a run whose store was down when its body
# returned: {"token", "result" (the encoded result), "ttl", "attempt"}. It never runs the body.
HEADER_FINISH = "onceonly_finish"
# Such a message is sent again while the store stays down, this many seconds later,
# doubling each time up to the cap. It does not use up the task's retries.
FINISH_DELAY_FIRST = 1.0
FINISH_DELAY_MAX = 60.0
_TOKEN = re.compile(r"[0-9a-f]{32}")


# The lease of a task with a hard time limit: the limit, plus this share of it, plus at
# least this many seconds, so that clock skew between hosts never ends it early.
LEASE_MARGIN_SHARE = 0.1
LEASE_MARGIN_MIN = 5.0

_CLAIM_ATTR = "_onceonly_claim"


class _Claim:
    """What one execution of a ``OnceTask`` holds, kept on its request."""

    __slots__ = ("beat", "handed_over", "key", "lease", "lock", "scope", "settled")

    def __init__(self, key: str, scope: str, lease: float) -> None:
        self.key = key
        self.scope = scope
        self.lease = lease
        self.lock: Lock | None = None
        self.beat: _Beat | None = None
        # True once a published retry carries this claim's token: the claim is its now.
        self.handed_over = False
        # True once this execution stored an outcome (e.g. "unknown" from retry()).
        self.settled = False

    @property
    def owned(self) -> bool:
        lock = self.lock
        return (
            lock is not None
            and lock.locked
            and not lock.unprotected
            and not self.settled
            and not self.handed_over
        )


def _static_option(cls: type, name: str) -> Any:
    """A class attribute as set, without binding a function set as an option to the task.

    Read from the classes' own dictionaries, in method resolution order, as
    ``inspect.getattr_static`` finds a class attribute (it also looks for descriptors on
    the metaclass, which task classes do not have, at about 5 µs a call: it runs for
    every message).
    """
    for klass in cls.__mro__:
        namespace = klass.__dict__
        if name in namespace:
            value = namespace[name]
            return value.__func__ if isinstance(value, staticmethod) else value
    raise AttributeError(f"{cls.__name__} has no option {name!r}")


def _delay(eta: Any, countdown: Any) -> float | None:
    """Seconds until a message with this ``eta`` or ``countdown`` runs; ``None`` if neither."""
    if isinstance(eta, dt.datetime):
        now = dt.datetime.now(dt.UTC)
        if eta.tzinfo is None:
            now = now.replace(tzinfo=None)  # Celery reads a naive ETA as UTC
        return max(0.0, (eta - now).total_seconds())
    if isinstance(countdown, (int, float)):
        return max(0.0, float(countdown))
    return None


def _current_claim(task: Task[..., Any]) -> _Claim | None:
    claim: _Claim | None = getattr(task.request, _CLAIM_ATTR, None)
    return claim


class OnceTask(Task[..., Any]):
    """A Celery task whose body runs once per intent; every other run gets its result.

    Options, set in the decorator (``@app.task(base=OnceTask, once_key=...)``) or as
    class attributes of a subclass:

    - ``once_key``: a template formatted with the bound arguments
      (``"welcome_email_{user_id}"``) or a callable taking the task's arguments; default:
      the task name plus a hash of the canonically serialised arguments.
    - ``once_scope``: a string, or a callable taking the task's arguments.
    - ``once_ttl``: how long the finished record blocks duplicates (``ONCEONLY_TTL``).
    - ``once_lease``: default the hard time limit plus a margin, else ``ONCEONLY_LEASE``.
    - ``once_on_duplicate``: ``"return"`` the stored result, or ``"raise"``
      :class:`DuplicateTask`.
    - ``once_on_in_progress``: ``"retry"`` with a countdown of the lease left,
      ``"skip"`` (return ``None``) or ``"raise"`` :class:`~django_onceonly.InProgress`.
    - ``once_on_error``: ``"release"`` the claim so a later attempt runs, or ``"fail"``.
    - ``once_ambiguous``: exception types whose outcome is unknown; the record turns
      ``unknown`` and the task is not retried, even by ``autoretry_for``.
    - ``once_enqueue``: also deduplicate at ``apply_async``.
    - ``once_resolve``: a function ``(record) -> Resolution`` that asks the provider
      what became of an ``unknown`` intent (:mod:`django_onceonly.resolve`); run by
      ``manage.py onceonly_resolve`` and the beat task ``tasks.resolve_unknown``.

    Inside the body, ``self.once`` is the :class:`~django_onceonly.Lock` this run holds.
    """

    once_key: ClassVar[str | Callable[..., str] | None] = None
    once_scope: ClassVar[str | Callable[..., str]] = ""
    once_ttl: ClassVar[float | dt.timedelta | None] = None
    once_lease: ClassVar[float | dt.timedelta | None] = None
    once_on_duplicate: ClassVar[str] = "return"
    once_on_in_progress: ClassVar[str] = "retry"
    once_on_error: ClassVar[str] = "release"
    once_ambiguous: ClassVar[tuple[type[BaseException], ...]] = ()
    once_enqueue: ClassVar[bool] = False
    once_resolve: ClassVar[Callable[..., Any] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Celery builds a subclass for each decorated function, so a bad option fails
        # when the task module is imported, not when the first message arrives.
        super().__init_subclass__(**kwargs)
        name = cls.__name__
        check_choice(f"{name}.once_on_duplicate", cls.once_on_duplicate, TASK_ON_DUPLICATE_CHOICES)
        check_choice(
            f"{name}.once_on_in_progress", cls.once_on_in_progress, TASK_ON_IN_PROGRESS_CHOICES
        )
        check_choice(f"{name}.once_on_error", cls.once_on_error, ON_ERROR_CHOICES)
        ambiguous = cls.once_ambiguous
        if isinstance(ambiguous, type):
            ambiguous = (ambiguous,)
        ambiguous = tuple(ambiguous)
        for kind in ambiguous:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(
                    f"{cls.__name__}.once_ambiguous must hold exception types, not {kind!r}"
                )
        cls.once_ambiguous = ambiguous
        optional_seconds(cls.once_ttl, f"{name}.once_ttl")
        optional_seconds(cls.once_lease, f"{name}.once_lease")
        key = _static_option(cls, "once_key")
        if key is not None and not isinstance(key, str) and not callable(key):
            raise TypeError(f"{cls.__name__}.once_key must be a str, a callable or None")
        resolve = _static_option(cls, "once_resolve")
        if resolve is not None and not callable(resolve):
            raise TypeError(f"{cls.__name__}.once_resolve must be a callable or None")
        scope = _static_option(cls, "once_scope")
        if isinstance(scope, str):
            validate_scope(scope)
        elif not callable(scope):
            raise TypeError(f"{cls.__name__}.once_scope must be a str or a callable")

    # -- the claim this run holds ----------------------------------------------------

    @property
    def once(self) -> Lock:
        """The :class:`~django_onceonly.Lock` of the running body (its key, token, ...)."""
        claim = _current_claim(self)
        if claim is None or claim.lock is None:
            raise RuntimeError("self.once is only set while the body of a OnceTask runs")
        return claim.lock

    def _once_identity(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
        """The ``(key, scope)`` of a call with these arguments."""
        cls = type(self)
        # The signature users wrote: without `self` for bind=True, and not the wrapper
        # that autoretry_for puts around `run`.
        run = getattr(self, "_orig_run", None) or self.run
        key = make_key(_static_option(cls, "once_key"), run, args, kwargs, name=self.name)
        scope = _static_option(cls, "once_scope")
        if callable(scope):
            scope = scope(*args, **kwargs)
        return key, validate_scope(scope)

    def _hard_time_limit(self) -> float | None:
        request = self.request
        limit = request.timelimit[0] if request.timelimit else None
        limit = limit or self.time_limit or self.app.conf.task_time_limit
        return float(limit) if limit else None

    def _lease_seconds(self, hard_limit: float | None) -> float:
        lease = self.once_lease
        if lease is not None:
            return lease.total_seconds() if isinstance(lease, dt.timedelta) else float(lease)
        if hard_limit:
            return hard_limit + max(LEASE_MARGIN_MIN, hard_limit * LEASE_MARGIN_SHARE)
        return float(conf.ONCEONLY_LEASE)

    # -- execution -------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:
            # A direct call (`task(...)`) has no request yet; Task.__call__ would push
            # one the same way. It is protected like a message, but cannot wait.
            self.push_request(args=args, kwargs=kwargs)
            try:
                return self._run_once(args, kwargs)
            finally:
                self.pop_request()
        return self._run_once(args, kwargs)

    def _run_once(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request = self.request
        headers = request.headers or {}
        key = headers.get(HEADER_KEY)
        if isinstance(key, str):
            scope = str(headers.get(HEADER_SCOPE) or "")
        else:
            key, scope = self._once_identity(args, kwargs)
        finish = headers.get(HEADER_FINISH)
        if finish is not None:
            return self._finish_from_message(key, scope, finish)
        hard_limit = self._hard_time_limit()
        claim = _Claim(key, scope, self._lease_seconds(hard_limit))
        setattr(request, _CLAIM_ATTR, claim)
        try:
            lock = check_lock(
                key,
                scope=scope,
                ttl=self.once_ttl,
                lease=claim.lease,
                on_error=self.once_on_error,
                task_name=self.name,
                task_id=request.id or "",
                _resume_token=str(headers.get(HEADER_TOKEN) or ""),
            )
        except StoreUnavailable as exc:
            # Fail closed: the body does not run unprotected; the task retries on its
            # own retry policy (default_retry_delay, max_retries).
            logger.warning(
                "django-onceonly: store unavailable for task %s key %r; retrying: %s",
                self.name,
                key,
                exc,
            )
            raise self.retry(exc=exc) from exc
        claim.lock = lock
        if lock.duplicate:
            return self._answer_duplicate(lock)
        if not lock.unprotected and (hard_limit is None or claim.lease < hard_limit):
            claim.beat = _heartbeat.start(lock, claim.lease)
        try:
            result = self.run(*args, **kwargs)
        except BaseException as exc:
            # Stopped first, so that no heartbeat races the release or failure below.
            self._stop_beat(claim)
            if isinstance(exc, Retry):
                if not claim.handed_over:
                    # Retry raised without a message carrying our token (a hand-made
                    # Retry, or a retry that was never published): give the key back.
                    self._settle_error(claim, None)
            elif isinstance(exc, Exception):
                self._settle_error(claim, exc)
            # Anything else (SystemExit, KeyboardInterrupt) is an interrupted run: its
            # outcome is unknown, so the claim is left to its lease and AFTER_LEASE.
            raise
        self._stop_beat(claim)
        try:
            lock.complete(result)
        except (InvalidResult, ResultTooLarge):
            # The result is refused before anything is written: free the claim and fail
            # the task with the store's clear message.
            self._settle_error(claim, None)
            raise
        except StoreUnavailable as exc:
            # The body ran: its outcome must reach the store, or a later message would
            # find the claim in progress forever. A message of its own carries it there.
            self._finish_later(lock, encode_result(result), exc, attempt=0)
        return result

    def _finish_later(
        self, lock: Lock, encoded: str, exc: StoreUnavailable, *, attempt: int
    ) -> None:
        """Publish a message that stores ``lock``'s outcome when the store is back."""
        countdown = min(FINISH_DELAY_MAX, FINISH_DELAY_FIRST * 2 ** min(attempt, 16))
        headers = self._headers(token=None)
        headers[HEADER_FINISH] = {
            "token": lock.token,
            "result": encoded,
            "ttl": lock.ttl,
            "attempt": attempt + 1,
        }
        signature = self.signature_from_request(self.request, countdown=countdown, headers=headers)
        try:
            signature.apply_async()
        except Exception:
            logger.exception(
                "django-onceonly: task %s ran but its outcome could not be stored (%s) nor "
                "published for later; key %r stays in progress until its lease ends, then "
                "ONCEONLY_AFTER_LEASE applies",
                self.name,
                exc,
                lock.key,
            )
            return
        logger.warning(
            "django-onceonly: task %s ran but the store is unavailable (%s); the outcome "
            "of key %r will be stored by a message in %.0fs (attempt %d)",
            self.name,
            exc,
            lock.key,
            countdown,
            attempt + 1,
        )

    def _finish_from_message(self, key: str, scope: str, finish: Any) -> Any:
        """Store the outcome a ``_finish_later`` message carries; the body does not run.

        Anyone who can publish to the broker can send this header: every field is checked
        before anything is written, and a malformed one rejects the message.
        """
        try:
            validate_key(key)
            validate_scope(scope)
            if not isinstance(finish, dict):
                raise TypeError(f"it must be an object, not {type(finish).__name__}")
            token, encoded = finish["token"], finish["result"]
            ttl, attempt = finish["ttl"], finish["attempt"]
            if not (isinstance(token, str) and _TOKEN.fullmatch(token)):
                raise ValueError("token must be an owner token (32 hexadecimal digits)")
            if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
                raise ValueError("attempt must be a whole number from 1")
            ttl = optional_seconds(ttl, "ttl")
            if not isinstance(encoded, str):
                raise TypeError("result must be the encoded result (text)")
            result = json.loads(encoded)
            encode_result(result)  # what complete() would refuse, refused before a write
        except (KeyError, TypeError, ValueError, OnceOnlyError) as exc:
            raise Reject(f"malformed {HEADER_FINISH} header: {exc}", requeue=False) from exc
        lock = Lock(
            key=key,
            scope=scope,
            status=LOCKED,
            record=None,
            token=token,
            ttl=ttl,
            on_error=self.once_on_error,
            transactional=False,
            now=timezone.now(),
        )
        try:
            lock.complete(result)
        except StoreUnavailable as exc:
            self._finish_later(lock, encoded, exc, attempt=attempt)
        except LockLost:
            # Another claim took the key over after this run's lease ended (reclaim):
            # the outcome belongs to that claim now.
            logger.warning(
                "django-onceonly: task %s could not store the outcome of key %r: it was "
                "taken over after the lease of the run that produced it ended",
                self.name,
                key,
            )
        else:
            logger.info("django-onceonly: stored the outcome of key %r after an outage", key)
        return result

    def _stop_beat(self, claim: _Claim) -> None:
        if claim.beat is not None:
            _heartbeat.stop(claim.beat)
            claim.beat = None

    def _settle_error(self, claim: _Claim, exc: BaseException | None) -> None:
        lock = claim.lock
        if lock is None or not claim.owned:
            return
        claim.settled = True
        action = "release"
        try:
            if exc is not None and isinstance(exc, self.once_ambiguous):
                action = "mark unknown"
                lock.fail(exc, outcome_unknown=True)
            elif (
                exc is not None
                and self.once_on_error == "fail"
                and not isinstance(exc, TaskPredicate)
            ):
                action = "fail"
                lock.fail(exc)
            else:
                lock.release()
        except OnceOnlyError:
            # The task's own exception matters more; the lease will end on its own.
            logger.exception(
                "django-onceonly: could not %s key %r after an error", action, lock.key
            )

    def _answer_duplicate(self, lock: Lock) -> Any:
        status = lock.record_status
        if status == COMPLETED:
            if self.once_on_duplicate == "raise":
                raise DuplicateTask(lock.key, lock.scope, lock.task_id, lock.result)
            return lock.result
        if status == IN_PROGRESS:
            if self.once_on_in_progress == "skip":
                return None
            request = self.request
            if self.once_on_in_progress == "raise" or request.called_directly or request.is_eager:
                raise InProgress(lock.key, lock.retry_after, lock.scope)
            self._wait_for(lock)
        raise IntentBlocked(lock.key, status or UNKNOWN, lock.error, lock.scope)

    def _wait_for(self, lock: Lock) -> None:
        """Send this message again after the lease left, without using up a retry."""
        request = self.request
        countdown = lock.retry_after or 1
        signature = self.signature_from_request(
            request, countdown=countdown, headers=self._headers(token=None)
        )
        waiting = InProgress(lock.key, lock.retry_after, lock.scope)
        try:
            signature.apply_async()
        except Exception as exc:
            # As Task.retry does when it cannot publish.
            raise Reject(exc, requeue=False) from exc
        raise Retry(exc=waiting, when=float(countdown), sig=signature)  # type: ignore[arg-type]

    def _headers(self, *, token: str | None) -> dict[str, Any]:
        claim = _current_claim(self)
        headers = dict(self.request.headers or {})
        headers.pop(HEADER_TOKEN, None)
        headers.pop(HEADER_FINISH, None)
        if claim is not None:
            headers[HEADER_KEY] = claim.key
            headers[HEADER_SCOPE] = claim.scope
        if token:
            headers[HEADER_TOKEN] = token
        return headers

    def retry(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: Exception | None = None,
        throw: bool = True,
        eta: dt.datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """``Task.retry`` that hands this run's claim over to the retry message.

        The lease is first extended to cover the countdown (or ETA) plus a lease, then
        the retry is published with the owner token in its headers, and resumes the
        claim when it runs. An ``exc`` listed in ``once_ambiguous`` is not retried: the
        record turns ``unknown`` and ``exc`` is raised.
        """
        claim = _current_claim(self)
        if claim is None:
            return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
        lock = claim.lock
        owned = claim.owned and lock is not None
        if owned and exc is not None and isinstance(exc, self.once_ambiguous):
            self._settle_error(claim, exc)
            raise exc
        token: str | None = None
        if owned and lock is not None:
            self._stop_beat(claim)
            delay = self._retry_delay(eta, countdown)
            try:
                lock.extend(delay + claim.lease)
            except LockLost:
                owned = False
                logger.warning("django-onceonly: key %r was taken over before its retry", lock.key)
            except StoreUnavailable as exc_store:
                # The retry still resumes the claim if nobody acted on the lease.
                logger.warning(
                    "django-onceonly: could not extend key %r for its retry: %s",
                    lock.key,
                    exc_store,
                )
            if owned:
                token = lock.token
        headers = self._headers(token=token)
        headers.update(
            {
                name: value
                for name, value in (options.pop("headers", None) or {}).items()
                if not name.startswith("onceonly_")
            }
        )
        try:
            answer = super().retry(
                args, kwargs, exc, throw, eta, countdown, max_retries, headers=headers, **options
            )
        except Retry:
            claim.handed_over = claim.handed_over or owned
            raise
        claim.handed_over = claim.handed_over or owned
        return answer

    def _retry_delay(self, eta: Any, countdown: Any) -> float:
        """Seconds until a retry runs; as ``Task.retry``, ``default_retry_delay`` if unset."""
        delay = _delay(eta, countdown)
        return float(self.default_retry_delay or 0) if delay is None else delay

    # -- publishing ------------------------------------------------------------------

    def apply_async(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Publish with the intent's key in the headers; with ``once_enqueue``, once.

        With ``once_enqueue=True`` the key is claimed before publishing: an intent that
        is completed returns the original's result, one that is queued or running the
        original's ``AsyncResult``, and nothing is published. If publishing fails the
        claim is released. Members of a canvas (chains, groups, chords, links) are always
        published and deduplicated when they run, so that the canvas completes.
        """
        headers: dict[str, Any] = dict(options.pop("headers", None) or {})

        def publish(task_id: str | None) -> AsyncResult[Any]:
            return super(OnceTask, self).apply_async(
                args,
                kwargs,
                task_id,
                producer,
                link,
                link_error,
                shadow,
                headers=headers,
                **options,
            )

        if HEADER_KEY in headers:
            # A retry, a wait or a re-send of a message: it keeps the key it was given.
            return publish(task_id)
        key, scope = self._once_identity(tuple(args or ()), dict(kwargs or {}))
        headers[HEADER_KEY] = key
        headers[HEADER_SCOPE] = scope
        headers.pop(HEADER_TOKEN, None)
        headers.pop(HEADER_FINISH, None)
        in_canvas = bool(
            link
            or link_error
            or options.get("chain")
            or options.get("chord")
            or options.get("group_id")
        )
        if not self.once_enqueue or in_canvas or self.app.conf.task_always_eager:
            return publish(task_id)

        task_id = task_id or uuid()
        limit = options.get("time_limit") or self.time_limit or self.app.conf.task_time_limit
        lease = self._lease_seconds(float(limit) if limit else None)
        lease += _delay(options.get("eta"), options.get("countdown")) or 0.0
        lock = check_lock(
            key,
            scope=scope,
            ttl=self.once_ttl,
            lease=lease,
            task_name=self.name,
            task_id=task_id,
        )
        if lock.duplicate:
            return self._original_result(lock)
        if lock.token:
            headers[HEADER_TOKEN] = lock.token
        try:
            return publish(task_id)
        except BaseException:
            # Nothing may be left claiming an intent that was never queued.
            try:
                lock.release()
            except OnceOnlyError:
                logger.exception(
                    "django-onceonly: could not release key %r after a failed publish", key
                )
            raise

    def _original_result(self, lock: Lock) -> AsyncResult[Any]:
        if lock.record_status == COMPLETED:
            # From the store, so it holds even when the result backend has forgotten it.
            return EagerResult(lock.task_id or uuid(), lock.result, states.SUCCESS, name=self.name)
        if lock.task_id:
            return self.AsyncResult(lock.task_id)
        if lock.record_status == IN_PROGRESS:
            raise InProgress(lock.key, lock.retry_after, lock.scope)
        raise IntentBlocked(lock.key, lock.record_status or UNKNOWN, lock.error, lock.scope)

    # -- durable enqueue -------------------------------------------------------------

    def enqueue(
        self,
        *args: Any,
        countdown: float | None = None,
        eta: dt.datetime | None = None,
        queue: str | None = None,
        **kwargs: Any,
    ) -> AsyncResult[Any]:
        """Publish this task if and only if the current transaction commits (the outbox).

        See :func:`django_onceonly.outbox.enqueue`: the message is written to the outbox
        in the caller's transaction, published right after the commit, and by the relay
        if the process dies or the broker is down before it could be.
        """
        from .outbox import enqueue

        return enqueue(self, *args, countdown=countdown, eta=eta, queue=queue, **kwargs)
