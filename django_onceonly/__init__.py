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
    from .locks import Lock, check_lock, once

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
    "check_lock",
    "once",
]


def __getattr__(name: str) -> Any:
    # The lock layer imports the models; loading it lazily keeps `import django_onceonly`
    # safe before Django's app registry is ready (settings files, celery.py).
    if name in ("Lock", "check_lock", "once"):
        from . import locks

        return getattr(locks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
