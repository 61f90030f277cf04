"""The public core: :func:`check_lock`, the :class:`Lock` handle and :func:`once`."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from asgiref.sync import sync_to_async
from django.utils import timezone

from . import signals
from .conf import conf
from .exceptions import (
    FingerprintMismatch,
    InProgress,
    IntentBlocked,
    InvalidResult,
    LockLost,
    OnceOnlyError,
    ResultTooLarge,
    StoreUnavailable,
)
from .keys import KeySpec, make_key, validate_fingerprint, validate_key, validate_scope
from .rules import (
    ON_ERROR_CHOICES,
    ONCE_ON_IN_PROGRESS_CHOICES,
    Status,
    check_choice,
    optional_seconds,
)
from .rules import seconds as to_seconds
from .stores import get_store
from .stores.base import ClaimRequest, Record

logger = logging.getLogger("django_onceonly")

P = ParamSpec("P")
R = TypeVar("R")

LOCKED = "locked"
DUPLICATE = "duplicate"
COMPLETED = Status.COMPLETED.value
FAILED = Status.FAILED.value
IN_PROGRESS = Status.IN_PROGRESS.value
UNKNOWN = Status.UNKNOWN.value


# PostgreSQL's jsonb refuses NUL, which JSON writes as \u0000. That text is an escape only
# after an even number of backslashes; the string "C:\\u0000" (a real backslash, then
# "u0000") encodes as "C:\\\\u0000" and must still be stored.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_result(result: Any) -> str:
    """Serialise ``result`` as stored, or raise ``InvalidResult`` / ``ResultTooLarge``."""
    try:
        encoded = json.dumps(result, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidResult(
            f"result of type {type(result).__name__} cannot be stored: it is not JSON-serialisable ({exc})"
        ) from exc
    if "\\u0000" in encoded and _ESCAPED_NUL.search(encoded):
        raise InvalidResult("result cannot be stored: it contains a NUL character (\\u0000)")
    try:
        size = len(encoded.encode())
    except UnicodeEncodeError as exc:
        raise InvalidResult(
            "result cannot be stored: it contains a lone surrogate "
            f"({exc.object[exc.start : exc.end]!r}), which is not valid UTF-8 text"
        ) from exc
    limit = conf.ONCEONLY_MAX_RESULT_BYTES
    if size > limit:
        raise ResultTooLarge(size, limit)
    return encoded


class Lock:
    """The answer to :func:`check_lock`: either you own the key or it is a duplicate.

    Attributes: ``status`` (``"locked"`` or ``"duplicate"``), ``key``, ``scope``,
    ``token`` (the owner token, ``None`` for a duplicate), ``record_status``, ``result``
    and ``error`` (of a finished duplicate), ``retry_after`` (seconds until a running
    duplicate's lease ends), ``created_at``, ``completed_at``, ``lease_expires_at``,
    ``expires_at``, and ``unprotected`` (true when the store was down and
    ``ONCEONLY_ON_STORE_ERROR="run"`` let the work go ahead without a claim).
    """

    def __init__(
        self,
        *,
        key: str,
        scope: str,
        status: str,
        record: Record | None,
        token: str | None,
        ttl: float | None,
        on_error: str,
        transactional: bool,
        now: dt.datetime,
        unprotected: bool = False,
    ) -> None:
        self.key = key
        self.scope = scope
        self.status = status
        self.token = token
        self.ttl = ttl
        self.on_error = on_error
        self.transactional = transactional
        self.unprotected = unprotected
        self.record_status: str | None = record.status if record else None
        self.result: Any = record.result if record and status == DUPLICATE else None
        self.error: str = record.error if record else ""
        self.fingerprint: str = record.fingerprint if record else ""
        self.created_at = record.created_at if record else None
        self.completed_at = record.completed_at if record else None
        self.lease_expires_at = record.lease_expires_at if record else None
        self.expires_at = record.expires_at if record else None
        self.task_name = record.task_name if record else ""
        self.task_id = record.task_id if record else ""
        self.retry_after: int | None = None
        if status == DUPLICATE and self.record_status == IN_PROGRESS and self.lease_expires_at:
            remaining = (self.lease_expires_at - now).total_seconds()
            self.retry_after = max(1, math.ceil(remaining))
        self._finished = False

    def __repr__(self) -> str:
        return f"<Lock {self.status} key={self.key!r} scope={self.scope!r} record_status={self.record_status!r}>"

    @property
    def locked(self) -> bool:
        return self.status == LOCKED

    @property
    def duplicate(self) -> bool:
        return self.status == DUPLICATE

    # -- the owner's operations ------------------------------------------------------

    def _owned(self, action: str) -> bool:
        """Check that this handle may act; False for an unprotected run (nothing to write)."""
        if self.status != LOCKED:
            raise LockLost(
                f"cannot {action} key {self.key!r}: this lock is a duplicate, not the owner"
            )
        if self._finished:
            raise LockLost(f"cannot {action} key {self.key!r}: this lock has already finished")
        return not self.unprotected

    def _expires_at(self, now: dt.datetime) -> dt.datetime | None:
        return None if self.ttl is None else now + dt.timedelta(seconds=self.ttl)

    def complete(self, result: Any = None) -> None:
        """Store ``result`` (JSON-serialisable, ``None`` included) as the key's outcome.

        Raises ``InvalidResult`` or ``ResultTooLarge`` before writing anything (the lock
        is still yours), ``LockLost`` if this owner no longer holds the key.
        """
        if not self._owned("complete"):
            self._finished = True
            return
        encoded = encode_result(result)
        now = timezone.now()
        expires_at = self._expires_at(now)
        get_store().finish(
            self.scope,
            self.key,
            self.token or "",
            status=COMPLETED,
            result_json=encoded,
            error="",
            now=now,
            expires_at=expires_at,
            transactional=self.transactional,
        )
        self._finished = True
        self.record_status = COMPLETED
        self.result = result
        self.completed_at = now
        self.expires_at = expires_at
        self.lease_expires_at = None
        signals.lock_completed.send(sender=Lock, lock=self, result=result)

    def fail(self, error: object, *, outcome_unknown: bool = False) -> None:
        """Store a final failure; later attempts are duplicates until released or expired.

        With ``outcome_unknown=True`` the record turns ``unknown`` instead of ``failed``:
        use it when the side effect may have happened (a timeout after the provider may
        have accepted). An ``unknown`` record never expires; a person releases it.
        """
        if not self._owned("fail"):
            self._finished = True
            return
        status = UNKNOWN if outcome_unknown else FAILED
        text = (
            str(error)
            if not isinstance(error, BaseException)
            else f"{type(error).__name__}: {error}"
        ).replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL
        if _LONE_SURROGATE.search(text):  # nor can any store hold a lone surrogate
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        now = timezone.now()
        expires_at = None if outcome_unknown else self._expires_at(now)
        get_store().finish(
            self.scope,
            self.key,
            self.token or "",
            status=status,
            result_json=None,
            error=text,
            now=now,
            expires_at=expires_at,
            transactional=self.transactional,
        )
        self._finished = True
        self.record_status = status
        self.error = text
        self.completed_at = now
        self.expires_at = expires_at
        self.lease_expires_at = None
        signals.lock_failed.send(sender=Lock, lock=self, error=text, status=status)

    def release(self) -> None:
        """Give the key back so that the next attempt claims it and runs."""
        if not self._owned("release"):
            self._finished = True
            return
        get_store().release(
            self.scope, self.key, self.token or "", transactional=self.transactional
        )
        self._finished = True
        self.record_status = None
        signals.lock_released.send(sender=Lock, lock=self)

    def extend(self, seconds: float | dt.timedelta) -> None:
        """Heartbeat: the lease now ends ``seconds`` from now. ``LockLost`` if no longer owner."""
        span = to_seconds(seconds, "seconds")
        if not self._owned("extend"):
            return
        now = timezone.now()
        lease_expires_at = now + dt.timedelta(seconds=span)
        get_store().extend(
            self.scope,
            self.key,
            self.token or "",
            lease_expires_at=lease_expires_at,
            now=now,
            transactional=self.transactional,
        )
        self.lease_expires_at = lease_expires_at

    # -- context manager -------------------------------------------------------------

    def __enter__(self) -> Lock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.locked or self._finished:
            return
        if exc is None:
            self.complete(None)
            return
        if not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit: the run
            # was stopped from outside, perhaps after its side effect. Its outcome is
            # unknown, as after a crash, so the claim is left to its lease and
            # ONCEONLY_AFTER_LEASE decides ("reclaim": the next attempt runs after the
            # lease; "hold": the record turns unknown). OnceTask does the same.
            logger.warning(
                "django-onceonly: run of key %r (scope %r) interrupted by %s; the claim is "
                "left to its lease",
                self.key,
                self.scope,
                type(exc).__name__,
            )
            return
        try:
            if self.on_error == "fail":
                self.fail(exc)
            else:
                self.release()
        except OnceOnlyError:
            # The original exception matters more; the lease will end on its own.
            logger.exception(
                "django-onceonly: could not %s key %r after an error", self.on_error, self.key
            )


def check_lock(
    key: str,
    *,
    scope: str = "",
    ttl: float | dt.timedelta | None = None,
    lease: float | dt.timedelta | None = None,
    fingerprint: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    on_error: str = "release",
    transactional: bool = False,
    task_name: str = "",
    task_id: str = "",
    _resume_token: str = "",
) -> Lock:
    """Claim ``key`` atomically: ``"locked"`` means go ahead, ``"duplicate"`` means skip.

    ``ttl`` (default ``ONCEONLY_TTL``) is how long a finished record blocks duplicates;
    ``lease`` (default ``ONCEONLY_LEASE``) how long this claim is trusted while running.
    ``fingerprint`` is a digest of the payload: the same key with another fingerprint
    raises ``FingerprintMismatch``. ``metadata`` is a JSON-serialisable dict kept with
    the record. ``on_error`` (``"release"`` or ``"fail"``) is what leaving a ``with``
    block by an exception does. ``transactional=True`` makes the claim part of the
    caller's open transaction on ``ONCEONLY_DATABASE``; by default it commits on its own.
    ``task_name``/``task_id`` are recorded for the admin (``OnceTask`` fills them in).
    ``_resume_token`` is private to ``OnceTask``: the token of this caller's own earlier
    claim, which a retry takes over under a new token (see "Resume" in ``stores.base``).
    """
    validate_key(key)
    validate_scope(scope)
    fingerprint_value = validate_fingerprint(fingerprint)
    check_choice("on_error", on_error, ON_ERROR_CHOICES)
    # Spans are checked before anything is written: a ttl the store cannot hold would
    # otherwise fail at complete(), after the work ran, and leave the key claimable.
    ttl_seconds = (
        to_seconds(ttl, "ttl")
        if ttl is not None
        else optional_seconds(conf.ONCEONLY_TTL, "ONCEONLY_TTL")
    )
    lease_seconds = to_seconds(lease if lease is not None else conf.ONCEONLY_LEASE, "lease")
    metadata_dict = dict(metadata or {})
    try:
        metadata_json = json.dumps(
            metadata_dict, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be a JSON-serialisable dict: {exc}") from exc
    if "\\u0000" in metadata_json and _ESCAPED_NUL.search(metadata_json):
        raise ValueError("metadata cannot be stored: it contains a NUL character (\\u0000)")
    if _LONE_SURROGATE.search(metadata_json):
        raise ValueError("metadata cannot be stored: it contains a lone surrogate (not UTF-8)")
    now = timezone.now()
    token = secrets.token_hex(16)
    request = ClaimRequest(
        scope=scope,
        key=key,
        token=token,
        now=now,
        lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
        after_lease=conf.ONCEONLY_AFTER_LEASE,
        fingerprint=fingerprint_value,
        metadata=metadata_dict,
        metadata_json=metadata_json,
        task_name=task_name,
        task_id=task_id,
        transactional=transactional,
        resume_token=_resume_token,
    )
    common: dict[str, Any] = {
        "key": key,
        "scope": scope,
        "ttl": ttl_seconds,
        "on_error": on_error,
        "transactional": transactional,
        "now": now,
    }
    try:
        outcome = get_store().claim(request)
    except StoreUnavailable as exc:
        if conf.ONCEONLY_ON_STORE_ERROR != "run":
            raise
        logger.warning(
            "django-onceonly: store unavailable, running key %r (scope %r) UNPROTECTED: %s",
            key,
            scope,
            exc,
        )
        return Lock(status=LOCKED, record=None, token=None, unprotected=True, **common)

    record = outcome.record
    if outcome.lease_expired:
        action = "reclaimed" if outcome.acquired else "held"
        logger.warning(
            "django-onceonly: lease on key %r (scope %r) expired; %s", key, scope, action
        )
    if outcome.acquired:
        lock = Lock(status=LOCKED, record=record, token=token, **common)
        if outcome.lease_expired:
            signals.lease_expired.send(sender=Lock, lock=lock, action="reclaimed")
        signals.lock_acquired.send(sender=Lock, lock=lock)
        return lock

    lock = Lock(status=DUPLICATE, record=record, token=None, **common)
    if outcome.lease_expired:
        signals.lease_expired.send(sender=Lock, lock=lock, action="held")
    if fingerprint_value and record.fingerprint and fingerprint_value != record.fingerprint:
        raise FingerprintMismatch(key, scope)
    logger.info(
        "django-onceonly: duplicate blocked for key %r (scope %r): record is %s",
        key,
        scope,
        record.status,
    )
    signals.duplicate_blocked.send(sender=Lock, lock=lock)
    return lock


def _duplicate_answer(lock: Lock, on_in_progress: str) -> Any:
    if lock.record_status == COMPLETED:
        return lock.result
    if lock.record_status == IN_PROGRESS:
        if on_in_progress == "skip":
            return None
        raise InProgress(lock.key, lock.retry_after, lock.scope)
    raise IntentBlocked(lock.key, lock.record_status or UNKNOWN, lock.error, lock.scope)


@overload
def once(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def once(
    func: None = None,
    /,
    *,
    key: KeySpec | None = None,
    name: str | None = None,
    scope: str = "",
    ttl: float | dt.timedelta | None = None,
    lease: float | dt.timedelta | None = None,
    on_error: Literal["release", "fail"] = "release",
    on_in_progress: Literal["raise", "skip"] = "raise",
    transactional: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def once(
    func: Callable[P, R] | None = None,
    /,
    *,
    key: KeySpec | None = None,
    name: str | None = None,
    scope: str = "",
    ttl: float | dt.timedelta | None = None,
    lease: float | dt.timedelta | None = None,
    on_error: Literal["release", "fail"] = "release",
    on_in_progress: Literal["raise", "skip"] = "raise",
    transactional: bool = False,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated function once per key and return its first result ever after.

    ``key`` is a template formatted with the bound arguments (``"welcome_{user_id}"``),
    or a callable taking the function's arguments; without it the key is ``name``
    (default ``module.qualname``) plus a hash of the arguments. A call while another is
    running raises ``InProgress`` (or returns ``None`` with ``on_in_progress="skip"``);
    a call after a stored failure raises ``IntentBlocked``. Works on ``async def`` too.
    """
    check_choice("on_error", on_error, ON_ERROR_CHOICES)
    check_choice("on_in_progress", on_in_progress, ONCE_ON_IN_PROGRESS_CHOICES)
    # Checked at decoration, so that a bad span fails when the module is imported.
    if ttl is not None:
        to_seconds(ttl, "ttl")
    if lease is not None:
        to_seconds(lease, "lease")
    options: dict[str, Any] = {
        "scope": scope,
        "ttl": ttl,
        "lease": lease,
        "on_error": on_error,
        "transactional": transactional,
    }

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(function):
            coroutine_function: Callable[..., Awaitable[Any]] = function

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                lock_key = make_key(key, function, args, kwargs, name=name)
                lock = await sync_to_async(check_lock)(lock_key, **options)
                if lock.duplicate:
                    return _duplicate_answer(lock, on_in_progress)
                try:
                    value = await coroutine_function(*args, **kwargs)
                    await sync_to_async(lock.complete)(value)
                except Exception as exc:
                    await sync_to_async(lock.__exit__)(type(exc), exc, exc.__traceback__)
                    raise
                except BaseException as exc:
                    # Cancelled or interrupted: nothing to write (see Lock.__exit__), and
                    # no await, which a cancelled task should not start.
                    lock.__exit__(type(exc), exc, exc.__traceback__)
                    raise
                return value

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            lock_key = make_key(key, function, args, kwargs, name=name)
            with check_lock(lock_key, **options) as lock:
                if lock.duplicate:
                    answer: R = _duplicate_answer(lock, on_in_progress)
                    return answer
                value = function(*args, **kwargs)
                lock.complete(value)
                return value

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate
