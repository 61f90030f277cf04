"""Every error django-onceonly raises is an :class:`OnceOnlyError`."""

from __future__ import annotations


class OnceOnlyError(Exception):
    """Base class of every error raised by django-onceonly."""


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
        super().__init__(
            f"key {key!r}{where} was first used with a different fingerprint; "
            "the same key must always carry the same payload"
        )


class InProgress(OnceOnlyError):
    """Another caller holds the key and is still running.

    ``retry_after`` is the number of seconds until its lease ends.
    """

    def __init__(self, key: str, retry_after: int | None, scope: str = "") -> None:
        self.key = key
        self.scope = scope
        self.retry_after = retry_after
        super().__init__(f"key {key!r} is being processed; retry after {retry_after} seconds")


class IntentBlocked(OnceOnlyError):
    """The key's earlier run ended ``failed`` or ``unknown``; it blocks until released.

    ``record_status`` says which, ``error`` is the stored error text.
    """

    def __init__(self, key: str, record_status: str, error: str, scope: str = "") -> None:
        self.key = key
        self.scope = scope
        self.record_status = record_status
        self.error = error
        super().__init__(
            f"key {key!r} is blocked: its earlier run ended {record_status!r} ({error or 'no error text'}); "
            "release it (admin or `manage.py onceonly_release`) to run it again"
        )


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
        super().__init__(
            f"result is {size} bytes as JSON, over ONCEONLY_MAX_RESULT_BYTES={limit}; "
            "store a reference (an id or URL) instead of the payload"
        )
