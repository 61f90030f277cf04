"""Settings, read live from ``django.conf.settings`` each time they are used."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils.functional import empty

DEFAULTS: dict[str, Any] = {
    "ONCEONLY_STORE": "django_onceonly.stores.DatabaseStore",
    "ONCEONLY_DATABASE": "default",
    "ONCEONLY_REDIS_CACHE": "default",
    "ONCEONLY_TTL": 86400,
    "ONCEONLY_LEASE": 300,
    "ONCEONLY_AFTER_LEASE": "reclaim",
    "ONCEONLY_ON_STORE_ERROR": "raise",
    "ONCEONLY_MAX_RESULT_BYTES": 1048576,
    "ONCEONLY_API_SCOPE": None,
    "ONCEONLY_OUTBOX_ALERT_AFTER": 300,
}


_MISSING = object()


class Settings:
    """Typed access to the ``ONCEONLY_*`` settings; values never cached, so ``override_settings`` works.

    This is the one reader of Django settings in the package: the system checks read the
    raw values through :meth:`get`, everything else through the typed properties.
    """

    def __init__(self) -> None:
        # The settings object last read, its attribute count then, and the names it did
        # not define (see get()).
        self._absent: tuple[object, int, frozenset[str]] = (None, -1, frozenset())

    def get(self, name: str) -> Any:
        """The raw value of ``name`` as configured, or its default.

        Read live each time, from the settings object itself (what
        ``django.conf.settings`` wraps, which its assignments and ``override_settings``
        change): a defined setting is one dictionary lookup. Django answers an undefined
        one by raising and catching ``AttributeError`` (about 2 µs, several times per
        claim), so the names found undefined are remembered for as long as the settings
        object stays the same one with the same number of attributes.
        ``override_settings`` swaps the object, and assigning or deleting a setting
        changes the count, so either is seen at the next read.
        """
        # object.__getattribute__: LazySettings' own __getattribute__ is Python code.
        wrapped = object.__getattribute__(settings, "_wrapped")
        if wrapped is empty:  # not configured yet: Django's own error, or a default
            return getattr(settings, name, DEFAULTS[name])
        own = wrapped.__dict__
        value = own.get(name, _MISSING)
        if value is not _MISSING:
            return value
        # Inherited by an override_settings holder from the settings under it, or absent.
        size = len(own)
        seen, seen_size, absent = self._absent
        if seen is wrapped and seen_size == size:
            if name in absent:
                return DEFAULTS[name]
        else:
            absent = frozenset()
        value = getattr(wrapped, name, _MISSING)
        if value is _MISSING:
            self._absent = (wrapped, size, absent | {name})
            return DEFAULTS[name]
        return value

    _get = get

    @property
    def database_aliases(self) -> list[str]:
        """The aliases of Django's ``DATABASES``."""
        return list(settings.DATABASES)

    def cache_config(self, alias: str) -> dict[str, Any] | None:
        """``CACHES[alias]`` as configured, or ``None`` if there is no such alias."""
        config: dict[str, Any] | None = getattr(settings, "CACHES", {}).get(alias)
        return config

    @property
    def ONCEONLY_STORE(self) -> str:
        return str(self._get("ONCEONLY_STORE"))

    @property
    def ONCEONLY_DATABASE(self) -> str:
        return str(self._get("ONCEONLY_DATABASE"))

    @property
    def ONCEONLY_REDIS_CACHE(self) -> str:
        return str(self._get("ONCEONLY_REDIS_CACHE"))

    @property
    def ONCEONLY_TTL(self) -> float | None:
        value: float | None = self._get("ONCEONLY_TTL")
        return value

    @property
    def ONCEONLY_LEASE(self) -> float:
        value: float = self._get("ONCEONLY_LEASE")
        return value

    @property
    def ONCEONLY_AFTER_LEASE(self) -> str:
        return str(self._get("ONCEONLY_AFTER_LEASE"))

    @property
    def ONCEONLY_ON_STORE_ERROR(self) -> str:
        return str(self._get("ONCEONLY_ON_STORE_ERROR"))

    @property
    def ONCEONLY_MAX_RESULT_BYTES(self) -> int:
        value: int = self._get("ONCEONLY_MAX_RESULT_BYTES")
        return value

    @property
    def ONCEONLY_API_SCOPE(self) -> str | None:
        value: str | None = self._get("ONCEONLY_API_SCOPE")
        return value

    @property
    def ONCEONLY_OUTBOX_ALERT_AFTER(self) -> float:
        value: float = self._get("ONCEONLY_OUTBOX_ALERT_AFTER")
        return value


conf = Settings()
