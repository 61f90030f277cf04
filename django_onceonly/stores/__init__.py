"""Stores keep the records. ``get_store()`` returns the one ``ONCEONLY_STORE`` names."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from ..conf import conf
from .base import BaseStore, ClaimRequest, ClaimResult, Record
from .database import DatabaseStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "BaseStore",
    "ClaimRequest",
    "ClaimResult",
    "DatabaseStore",
    "Record",
    "RedisStore",
    "get_store",
]


def __getattr__(name: str) -> Any:
    # RedisStore imports django-redis, an optional extra: load it only when named.
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _load(path: str) -> BaseStore:
    cls = import_string(path)
    if not (isinstance(cls, type) and issubclass(cls, BaseStore)):
        raise TypeError(
            f"ONCEONLY_STORE={path!r} is not a subclass of django_onceonly.stores.BaseStore"
        )
    return cls()


def get_store() -> BaseStore:
    """The configured store instance, created once per ``ONCEONLY_STORE`` value."""
    return _load(conf.ONCEONLY_STORE)


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("ONCEONLY_") or setting in ("DATABASES", "CACHES"):
        _load.cache_clear()


setting_changed.connect(_reset, dispatch_uid="django_onceonly.stores.reset")
