"""Every error django-onceonly raises is an :class:`OnceOnlyError`."""

from __future__ import annotations

import shlex
from typing import Any


class OnceOnlyError(Exception):
    """Base class of every error raised by django-onceonly."""

    # Errors with attributes keep their constructor arguments in ``args`` and their text
    # here, so that pickling (Celery's prefork pool) and Celery's result backends, which
    # rebuild an exception as ``cls(*args)``, give back the same class, not a base class.
    message: str | None = None

    def __str__(self) -> str:
        return self.message if self.message is not None else super().__str__()


class InvalidKey(OnceOnlyError, ValueError):
    """The key or scope is empty, too long or contains a control character.

    Nothing is written when this is raised.
    """


class FingerprintMismatch(OnceOnlyError):
    """The key was first claimed with a different fingerprint (another payload).

    The work is not run again; the API answers HTTP 422.
    """

    def __init__(self, key: str, scope: str = "") -> None:
        self.key = key
        self.scope = scope
        where = f" in scope {scope!r}" if scope else ""
        self.message = (
            f"key {key!r}{where} was first used with a different fingerprint; "
            "the same key must always carry the same payload"
        )
        super().__init__(key, scope)


class InProgress(OnceOnlyError):
    """Another caller holds the key and is still running.

    ``retry_after`` is the number of seconds until its lease ends.
    """

    def __init__(self, key: str, retry_after: int | None, scope: str = "") -> None:
        self.key = key
        self.scope = scope
        self.retry_after = retry_after
        self.message = f"key {key!r} is being processed; retry after {retry_after} seconds"
        super().__init__(key, retry_after, scope)


class IntentBlocked(OnceOnlyError):
    """The key's earlier run ended ``failed`` or ``unknown``; it blocks until released.

    ``record_status`` says which, ``error`` is the stored error text.
    """

    def __init__(self, key: str, record_status: str, error: str, scope: str = "") -> None:
        self.key = key
        self.scope = scope
        self.record_status = record_status
        self.error = error
        self.message = (
            f"key {key!r} is blocked: its earlier run ended {record_status!r} ({error or 'no error text'}); "
            "release it (admin or `manage.py onceonly_release`) to run it again"
        )
        super().__init__(key, record_status, error, scope)


class DuplicateTask(OnceOnlyError):
    """A ``OnceTask`` with ``once_on_duplicate="raise"`` found its intent already completed.

    ``key``, ``scope``, ``result`` (the stored result) and ``task_id`` (the task that
    completed it) describe the original. The body did not run.
    """

    def __init__(self, key: str, scope: str = "", task_id: str = "", result: Any = None) -> None:
        self.key = key
        self.scope = scope
        self.task_id = task_id
        self.result = result
        self.message = (
            f"key {key!r} already completed (task {task_id or 'unknown'}); "
            "the body did not run again"
        )
        super().__init__(key, scope, task_id, result)


class LockLost(OnceOnlyError):
    """The caller no longer owns the key: its lease was taken over, or the key was released.

    Nothing was written.
    """


class StoreUnavailable(OnceOnlyError):
    """The store (database or Redis) could not be reached. Nothing is known to be written."""


class InvalidResult(OnceOnlyError, TypeError):
    """The result cannot be stored because it is not JSON-serialisable. Nothing was written."""


class ResultTooLarge(OnceOnlyError, ValueError):
    """The serialised result is larger than ``ONCEONLY_MAX_RESULT_BYTES``. Nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        self.message = (
            f"result is {size} bytes as JSON, over ONCEONLY_MAX_RESULT_BYTES={limit}; "
            "store a reference (an id or URL) instead of the payload"
        )
        super().__init__(size, limit)


class DamagedRecord(OnceOnlyError):
    """The store holds a record for the key that it cannot read (edited by hand, say).

    The key is never taken for absent and the work does not run.
    ``detail`` says what is wrong. An operator inspects the record, then deletes it with
    ``manage.py onceonly_release`` (after which the intent may run again).
    """

    def __init__(self, key: str, detail: str, scope: str = "") -> None:
        self.key = key
        self.scope = scope
        self.detail = detail
        where = f" in scope {scope!r}" if scope else ""
        option = f" --scope {shlex.quote(scope)}" if scope else ""
        self.message = (
            f"the stored record of key {key!r}{where} is damaged ({detail}); it is left as it "
            "is and the work does not run. Inspect the record, then delete it with "
            f"`manage.py onceonly_release {shlex.quote(key)}{option}` to let the intent "
            "run again"
        )
        super().__init__(key, detail, scope)
