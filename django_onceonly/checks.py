"""System checks for the ``ONCEONLY_*`` settings (ids ``django_onceonly.E001``...).

One registered check per concern; every value is read through :data:`conf.conf` and
judged by the rule in :mod:`django_onceonly.rules` that the code itself applies, so a
setting the checks accept is one the package accepts.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register
from django.utils.module_loading import import_string

from .conf import conf
from .rules import AFTER_LEASE_CHOICES, MAX_SECONDS, ON_STORE_ERROR_CHOICES, seconds


def _store_class() -> type | None:
    """The class ``ONCEONLY_STORE`` names, or ``None`` if it does not import."""
    path = conf.get("ONCEONLY_STORE")
    try:
        found = import_string(path) if isinstance(path, str) else None
    except ImportError:
        return None
    return found if isinstance(found, type) else None


def _valid_span(value: Any, name: str) -> bool:
    try:
        seconds(value, name)
    except ValueError:
        return False
    return True


@register()
def check_store(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from .stores.base import BaseStore

    store = conf.get("ONCEONLY_STORE")
    try:
        store_class = import_string(store) if isinstance(store, str) else None
    except ImportError as exc:
        return [
            Error(
                f"ONCEONLY_STORE={store!r} cannot be imported: {exc}",
                hint="Use 'django_onceonly.stores.DatabaseStore', 'django_onceonly.stores.RedisStore' "
                "(needs the [redis] extra) or the dotted path to your own BaseStore subclass.",
                id="django_onceonly.E001",
            )
        ]
    if not (isinstance(store_class, type) and issubclass(store_class, BaseStore)):
        return [
            Error(
                f"ONCEONLY_STORE={store!r} is not a subclass of django_onceonly.stores.BaseStore.",
                id="django_onceonly.E002",
            )
        ]
    return []


@register()
def check_spans(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    limit = f"at most {MAX_SECONDS} (100 years)"  # the same bound check_lock applies
    ttl = conf.get("ONCEONLY_TTL")
    if ttl is not None and not _valid_span(ttl, "ONCEONLY_TTL"):
        errors.append(
            Error(
                f"ONCEONLY_TTL={ttl!r} must be a positive number of seconds, {limit}, "
                "or None (keep forever).",
                id="django_onceonly.E003",
            )
        )
    lease = conf.get("ONCEONLY_LEASE")
    if not _valid_span(lease, "ONCEONLY_LEASE"):
        errors.append(
            Error(
                f"ONCEONLY_LEASE={lease!r} must be a positive number of seconds, {limit}.",
                id="django_onceonly.E004",
            )
        )
    return errors


@register()
def check_policies(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    after_lease = conf.get("ONCEONLY_AFTER_LEASE")
    if after_lease not in AFTER_LEASE_CHOICES:
        errors.append(
            Error(
                f"ONCEONLY_AFTER_LEASE={after_lease!r} must be 'reclaim' (at-least-once) or 'hold' (at-most-once).",
                id="django_onceonly.E005",
            )
        )
    on_store_error = conf.get("ONCEONLY_ON_STORE_ERROR")
    if on_store_error not in ON_STORE_ERROR_CHOICES:
        errors.append(
            Error(
                f"ONCEONLY_ON_STORE_ERROR={on_store_error!r} must be 'raise' (fail closed) or 'run'.",
                id="django_onceonly.E006",
            )
        )
    return errors


@register()
def check_result_limit(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    max_bytes = conf.get("ONCEONLY_MAX_RESULT_BYTES")
    if isinstance(max_bytes, int) and not isinstance(max_bytes, bool) and max_bytes > 0:
        return []
    return [
        Error(
            f"ONCEONLY_MAX_RESULT_BYTES={max_bytes!r} must be a positive whole number of bytes.",
            id="django_onceonly.E007",
        )
    ]


@register()
def check_database(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    database = conf.get("ONCEONLY_DATABASE")
    aliases = conf.database_aliases
    if database in aliases:
        return []
    return [
        Error(
            f"ONCEONLY_DATABASE={database!r} is not an alias in DATABASES.",
            hint=f"Known aliases: {', '.join(sorted(aliases))}.",
            id="django_onceonly.E008",
        )
    ]


@register()
def check_redis_cache(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        from .stores.redis import RedisStore
    except ImportError:  # no django-redis: no store can be a RedisStore
        return []
    store_class = _store_class()
    if store_class is None or not issubclass(store_class, RedisStore):
        return []
    cache = conf.get("ONCEONLY_REDIS_CACHE")
    config = conf.cache_config(cache)
    if config is None:
        return [
            Error(
                f"ONCEONLY_REDIS_CACHE={cache!r} is not an alias in CACHES.",
                id="django_onceonly.E009",
            )
        ]
    if "django_redis" not in str(config.get("BACKEND", "")):
        return [
            Error(
                f"CACHES[{cache!r}] does not use django-redis; RedisStore needs a django_redis backend.",
                id="django_onceonly.E010",
            )
        ]
    version = config.get("VERSION", 1)
    if version != 1:
        return [
            Warning(
                f"CACHES[{cache!r}] has VERSION={version!r}: RedisStore's keys include the "
                "cache's VERSION, so changing it (a common way to flush a cache) forgets every "
                "stored intent and lets all past work run again.",
                hint="Give RedisStore a cache alias of its own (ONCEONLY_REDIS_CACHE) whose "
                "VERSION never changes, and silence this warning "
                "(SILENCED_SYSTEM_CHECKS) once it is so.",
                id="django_onceonly.W001",
            )
        ]
    return []


CHECKS = (
    check_store,
    check_spans,
    check_policies,
    check_result_limit,
    check_database,
    check_redis_cache,
)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every check above, in order (what ``manage.py check`` runs for this app)."""
    return [message for check in CHECKS for message in check(app_configs, **kwargs)]
