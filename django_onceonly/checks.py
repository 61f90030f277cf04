"""System checks for the ``ONCEONLY_*`` settings (ids ``django_onceonly.E001``...)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.utils.module_loading import import_string

from .conf import AFTER_LEASE_CHOICES, DEFAULTS, ON_STORE_ERROR_CHOICES


def _value(name: str) -> Any:
    return getattr(settings, name, DEFAULTS[name])


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from .stores.base import BaseStore

    errors: list[CheckMessage] = []
    store = _value("ONCEONLY_STORE")
    try:
        store_class = import_string(store) if isinstance(store, str) else None
    except ImportError as exc:
        errors.append(
            Error(
                f"ONCEONLY_STORE={store!r} cannot be imported: {exc}",
                hint="Use 'django_onceonly.stores.DatabaseStore', 'django_onceonly.stores.RedisStore' "
                "(needs the [redis] extra) or the dotted path to your own BaseStore subclass.",
                id="django_onceonly.E001",
            )
        )
    else:
        if not (isinstance(store_class, type) and issubclass(store_class, BaseStore)):
            errors.append(
                Error(
                    f"ONCEONLY_STORE={store!r} is not a subclass of django_onceonly.stores.BaseStore.",
                    id="django_onceonly.E002",
                )
            )
    ttl = _value("ONCEONLY_TTL")
    if ttl is not None and not _positive_number(ttl):
        errors.append(
            Error(
                f"ONCEONLY_TTL={ttl!r} must be a positive number of seconds or None (keep forever).",
                id="django_onceonly.E003",
            )
        )
    lease = _value("ONCEONLY_LEASE")
    if not _positive_number(lease):
        errors.append(
            Error(
                f"ONCEONLY_LEASE={lease!r} must be a positive number of seconds.",
                id="django_onceonly.E004",
            )
        )
    after_lease = _value("ONCEONLY_AFTER_LEASE")
    if after_lease not in AFTER_LEASE_CHOICES:
        errors.append(
            Error(
                f"ONCEONLY_AFTER_LEASE={after_lease!r} must be 'reclaim' (at-least-once) or 'hold' (at-most-once).",
                id="django_onceonly.E005",
            )
        )
    on_store_error = _value("ONCEONLY_ON_STORE_ERROR")
    if on_store_error not in ON_STORE_ERROR_CHOICES:
        errors.append(
            Error(
                f"ONCEONLY_ON_STORE_ERROR={on_store_error!r} must be 'raise' (fail closed) or 'run'.",
                id="django_onceonly.E006",
            )
        )
    max_bytes = _value("ONCEONLY_MAX_RESULT_BYTES")
    if not (isinstance(max_bytes, int) and not isinstance(max_bytes, bool) and max_bytes > 0):
        errors.append(
            Error(
                f"ONCEONLY_MAX_RESULT_BYTES={max_bytes!r} must be a positive whole number of bytes.",
                id="django_onceonly.E007",
            )
        )
    database = _value("ONCEONLY_DATABASE")
    if database not in settings.DATABASES:
        errors.append(
            Error(
                f"ONCEONLY_DATABASE={database!r} is not an alias in DATABASES.",
                hint=f"Known aliases: {', '.join(sorted(settings.DATABASES))}.",
                id="django_onceonly.E008",
            )
        )
    if isinstance(store, str) and store.endswith("RedisStore"):
        cache = _value("ONCEONLY_REDIS_CACHE")
        caches = getattr(settings, "CACHES", {})
        if cache not in caches:
            errors.append(
                Error(
                    f"ONCEONLY_REDIS_CACHE={cache!r} is not an alias in CACHES.",
                    id="django_onceonly.E009",
                )
            )
        elif "django_redis" not in str(caches[cache].get("BACKEND", "")):
            errors.append(
                Error(
                    f"CACHES[{cache!r}] does not use django-redis; RedisStore needs a django_redis backend.",
                    id="django_onceonly.E010",
                )
            )
    return errors
