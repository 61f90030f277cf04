"""django-onceonly: claim a key once, store the first result, answer every retry with it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import (
    DamagedRecord,
    DuplicateTask,
    FingerprintMismatch,
    InProgress,
    IntentBlocked,
    InvalidKey,
    InvalidResult,
    LockLost,
    OnceOnlyError,
    ResultTooLarge,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from .batch import check_locks
    from .decorators import once
    from .locks import Lock, acheck_lock, check_lock

__version__ = "0.1.0.dev0"

__all__ = [
    "DamagedRecord",
    "DuplicateTask",
    "FingerprintMismatch",
    "InProgress",
    "IntentBlocked",
    "InvalidKey",
    "InvalidResult",
    "Lock",
    "LockLost",
    "OnceOnlyError",
    "ResultTooLarge",
    "StoreUnavailable",
    "acheck_lock",
    "check_lock",
    "check_locks",
    "once",
]


def __getattr__(name: str) -> Any:
    # The lock layer imports the models; loading it lazily keeps `import django_onceonly`
    # safe before Django's app registry is ready (settings files, celery.py).
    if name in ("Lock", "acheck_lock", "check_lock"):
        from . import locks

        return getattr(locks, name)
    if name == "check_locks":
        from .batch import check_locks

        return check_locks
    if name == "once":
        from .decorators import once

        return once
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
