"""The public core: :func:`check_lock` and the :class:`Lock` handle (``@once`` is in ``decorators``).

It stays one module, a little past the house's 400 lines: the handle, the claim that
builds it and the options and answers that ``check_locks`` shares are one flow, and
splitting them would spread one rule (what a claim returns) over several files.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar

from asgiref.sync import sync_to_async
from django.utils import timezone

from . import signals
from .conf import conf
from .encoding import encode_error, encode_metadata, encode_result
from .exceptions import FingerprintMismatch, LockLost, OnceOnlyError, StoreUnavailable
from .keys import validate_fingerprint, validate_key, validate_scope
from .rules import (
    ON_ERROR_CHOICES,
    Status,
    check_choice,
    optional_seconds,
)
from .rules import seconds as to_seconds
from .stores import get_store
from .stores.base import ClaimRequest, ClaimResult, Record

logger = logging.getLogger("django_onceonly")


LOCKED = "locked"
DUPLICATE = "duplicate"
COMPLETED = Status.COMPLETED.value
FAILED = Status.FAILED.value
IN_PROGRESS = Status.IN_PROGRESS.value
UNKNOWN = Status.UNKNOWN.value


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
        text = encode_error(error)
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

    # -- async twins: the same operations from `async def` code ----------------------
    # Each runs its store call in a worker thread (asgiref's sync_to_async, thread
    # sensitive like Django's ORM), so the event loop never blocks on the store.

    async def acomplete(self, result: Any = None) -> None:
        """:meth:`complete` for ``async def`` code."""
        await sync_to_async(self.complete)(result)

    async def afail(self, error: object, *, outcome_unknown: bool = False) -> None:
        """:meth:`fail` for ``async def`` code."""
        await sync_to_async(self.fail)(error, outcome_unknown=outcome_unknown)

    async def arelease(self) -> None:
        """:meth:`release` for ``async def`` code."""
        await sync_to_async(self.release)()

    async def aextend(self, seconds: float | dt.timedelta) -> None:
        """:meth:`extend` for ``async def`` code."""
        await sync_to_async(self.extend)(seconds)

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
    spans = _Options.build(ttl=ttl, lease=lease, metadata=metadata, on_error=on_error)
    now = timezone.now()
    request = spans.request(
        key,
        scope=scope,
        now=now,
        fingerprint=fingerprint_value,
        transactional=transactional,
        task_name=task_name,
        task_id=task_id,
        resume_token=_resume_token,
    )
    try:
        outcome = get_store().claim(request)
    except StoreUnavailable as exc:
        if conf.ONCEONLY_ON_STORE_ERROR != "run":
            raise
        return _unprotected(request, spans, exc)
    return _answer(request, spans, outcome)


class _Options:
    """The validated options of a claim, shared by every key of a batch."""

    __slots__ = ("lease", "metadata", "metadata_json", "on_error", "ttl")

    # (ONCEONLY_TTL, ONCEONLY_LEASE, the options built from them): see build().
    _from_settings: ClassVar[tuple[Any, Any, _Options] | None] = None

    def __init__(
        self, ttl: float | None, lease: float, metadata: dict[str, Any], on_error: str
    ) -> None:
        self.ttl = ttl
        self.lease = lease
        self.metadata = metadata
        self.metadata_json = encode_metadata(metadata)
        self.on_error = on_error

    @classmethod
    def build(
        cls,
        *,
        ttl: float | dt.timedelta | None,
        lease: float | dt.timedelta | None,
        metadata: Mapping[str, Any] | None,
        on_error: str,
    ) -> _Options:
        # The common call names no option: every one comes from the settings. The options
        # built from the settings' values last time are reused while those values stay
        # the same objects (an identity test: True is not taken for 1).
        from_settings = ttl is None and lease is None and metadata is None
        ttl_setting, lease_setting = conf.ONCEONLY_TTL, conf.ONCEONLY_LEASE
        last = _Options._from_settings
        if (
            from_settings
            and on_error == "release"
            and last is not None
            and last[0] is ttl_setting
            and last[1] is lease_setting
        ):
            return last[2]
        check_choice("on_error", on_error, ON_ERROR_CHOICES)
        # Spans are checked before anything is written: a ttl the store cannot hold would
        # otherwise fail at complete(), after the work ran, and leave the key claimable.
        ttl_seconds = (
            to_seconds(ttl, "ttl")
            if ttl is not None
            else optional_seconds(ttl_setting, "ONCEONLY_TTL")
        )
        lease_seconds = to_seconds(lease if lease is not None else lease_setting, "lease")
        if metadata is not None and not isinstance(metadata, Mapping):
            # dict() would raise TypeError, or turn a string of pairs into a dict.
            raise ValueError(
                f"metadata must be a JSON-serialisable dict or None, not {type(metadata).__name__}"
            )
        options = cls(ttl_seconds, lease_seconds, dict(metadata or {}), on_error)
        if from_settings and on_error == "release":
            _Options._from_settings = (ttl_setting, lease_setting, options)
        return options

    def request(
        self,
        key: str,
        *,
        scope: str,
        now: dt.datetime,
        fingerprint: str = "",
        transactional: bool = False,
        task_name: str = "",
        task_id: str = "",
        resume_token: str = "",
    ) -> ClaimRequest:
        return ClaimRequest(
            scope=scope,
            key=key,
            token=secrets.token_hex(16),
            now=now,
            lease_expires_at=now + dt.timedelta(seconds=self.lease),
            after_lease=conf.ONCEONLY_AFTER_LEASE,
            fingerprint=fingerprint,
            metadata=self.metadata or {},  # options are reused: a dict of its own
            metadata_json=self.metadata_json,
            task_name=task_name,
            task_id=task_id,
            transactional=transactional,
            resume_token=resume_token,
        )

    def lock_options(self, request: ClaimRequest) -> dict[str, Any]:
        return {
            "key": request.key,
            "scope": request.scope,
            "ttl": self.ttl,
            "on_error": self.on_error,
            "transactional": request.transactional,
            "now": request.now,
        }


def _unprotected(request: ClaimRequest, options: _Options, exc: Exception) -> Lock:
    """The lock of a run that goes ahead without a claim (``ONCEONLY_ON_STORE_ERROR="run"``)."""
    logger.warning(
        "django-onceonly: store unavailable, running key %r (scope %r) UNPROTECTED: %s",
        request.key,
        request.scope,
        exc,
    )
    return Lock(
        status=LOCKED, record=None, token=None, unprotected=True, **options.lock_options(request)
    )


def _answer(request: ClaimRequest, options: _Options, outcome: ClaimResult) -> Lock:
    """The :class:`Lock` for a store's answer to ``request``, with its signals and logs."""
    key, scope, common = request.key, request.scope, options.lock_options(request)
    record = outcome.record
    if outcome.lease_expired:
        action = "reclaimed" if outcome.acquired else "held"
        logger.warning(
            "django-onceonly: lease on key %r (scope %r) expired; %s", key, scope, action
        )
    if outcome.acquired:
        lock = Lock(status=LOCKED, record=record, token=request.token, **common)
        if outcome.lease_expired:
            signals.lease_expired.send(sender=Lock, lock=lock, action="reclaimed")
        signals.lock_acquired.send(sender=Lock, lock=lock)
        return lock

    lock = Lock(status=DUPLICATE, record=record, token=None, **common)
    if outcome.lease_expired:
        signals.lease_expired.send(sender=Lock, lock=lock, action="held")
    if request.fingerprint and record.fingerprint and request.fingerprint != record.fingerprint:
        raise FingerprintMismatch(key, scope)
    logger.info(
        "django-onceonly: duplicate blocked for key %r (scope %r): record is %s",
        key,
        scope,
        record.status,
    )
    signals.duplicate_blocked.send(sender=Lock, lock=lock)
    return lock


async def acheck_lock(key: str, **options: Any) -> Lock:
    """:func:`check_lock` for ``async def`` code: the same arguments, the same :class:`Lock`.

    The claim runs in a worker thread, so the event loop is free while the store answers.
    Use the lock's async twins (``acomplete``, ``afail``, ``arelease``, ``aextend``) on it.
    """
    return await sync_to_async(check_lock)(key, **options)


def __getattr__(name: str) -> Any:
    # `once` moved to `decorators` (which imports this module); still importable here.
    if name == "once":
        from .decorators import once

        return once
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
