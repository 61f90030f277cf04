"""System checks: one test per id, django_onceonly.E001 to E010 and W001."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import Error, Warning, run_checks
from django.core.checks.registry import registry
from django.test import override_settings

from django_onceonly import checks
from django_onceonly.checks import check_settings
from django_onceonly.stores import DatabaseStore
from django_onceonly.stores.redis import RedisStore

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
REDIS = {
    "default": LOCMEM["default"],
    "onceonly": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/0",
    },
}


def errors(**overrides: Any) -> list[Error]:
    with override_settings(**overrides):
        found = check_settings(None)
    assert all(isinstance(error, Error) for error in found)
    return found  # type: ignore[return-value]


class MyRedisStore(RedisStore):
    """A store whose path does not end with "RedisStore": still checked as one."""


class CustomStoreForRedis(MyRedisStore):
    pass


class NotARedisStore(DatabaseStore):
    """Its name ends like RedisStore's; it is a database store all the same."""


def only(found: list[Error], check_id: str) -> Error:
    assert [error.id for error in found] == [check_id]
    return found[0]


def test_default_settings_give_no_errors() -> None:
    assert check_settings(None) == []


def test_every_valid_choice_gives_no_errors() -> None:
    valid = {
        "ONCEONLY_STORE": "django_onceonly.stores.DatabaseStore",
        "ONCEONLY_DATABASE": "default",
        "ONCEONLY_TTL": None,
        "ONCEONLY_LEASE": 0.5,
        "ONCEONLY_AFTER_LEASE": "hold",
        "ONCEONLY_ON_STORE_ERROR": "run",
        "ONCEONLY_MAX_RESULT_BYTES": 1,
    }
    assert errors(**valid) == []
    assert errors(ONCEONLY_AFTER_LEASE="reclaim", ONCEONLY_ON_STORE_ERROR="raise") == []
    assert errors(ONCEONLY_TTL=2.5) == []


@pytest.mark.django_db(databases="__all__")  # Django 6 checks query every database
def test_checks_are_registered_with_django() -> None:
    with override_settings(ONCEONLY_AFTER_LEASE="later"):
        ids = [message.id for message in run_checks()]

    assert "django_onceonly.E005" in ids


@pytest.mark.parametrize(
    "store", ["django_onceonly.stores.NoSuchStore", "no_such_package.Store", "NoDots"]
)
def test_e001_store_that_does_not_import(store: str) -> None:
    error = only(errors(ONCEONLY_STORE=store), "django_onceonly.E001")

    assert error.msg.startswith(f"ONCEONLY_STORE={store!r} cannot be imported: ")
    assert error.hint is not None
    assert "DatabaseStore" in error.hint


@pytest.mark.parametrize(
    "store", ["django_onceonly.conf.Settings", "django_onceonly.conf.conf", "collections.abc.Set"]
)
def test_e002_store_that_is_not_a_base_store(store: str) -> None:
    error = only(errors(ONCEONLY_STORE=store), "django_onceonly.E002")

    assert error.msg == (
        f"ONCEONLY_STORE={store!r} is not a subclass of django_onceonly.stores.BaseStore."
    )


@pytest.mark.parametrize(
    "ttl", [0, -1, "86400", True, [60], 1e12, float("inf"), float("nan"), 3_153_600_001]
)
def test_e003_ttl_that_is_not_positive_or_none(ttl: Any) -> None:
    error = only(errors(ONCEONLY_TTL=ttl), "django_onceonly.E003")

    assert error.msg == (
        f"ONCEONLY_TTL={ttl!r} must be a positive number of seconds, at most 3153600000 "
        "(100 years), or None (keep forever)."
    )


@pytest.mark.parametrize("lease", [0, -30, None, "300", False, 1e12, float("inf"), float("-inf")])
def test_e004_lease_that_is_not_positive(lease: Any) -> None:
    error = only(errors(ONCEONLY_LEASE=lease), "django_onceonly.E004")

    assert error.msg == (
        f"ONCEONLY_LEASE={lease!r} must be a positive number of seconds, at most 3153600000 "
        "(100 years)."
    )


@pytest.mark.parametrize("after_lease", ["retry", "Reclaim", "", None])
def test_e005_after_lease_that_is_not_a_choice(after_lease: Any) -> None:
    error = only(errors(ONCEONLY_AFTER_LEASE=after_lease), "django_onceonly.E005")

    assert error.msg == (
        f"ONCEONLY_AFTER_LEASE={after_lease!r} must be 'reclaim' (at-least-once) "
        "or 'hold' (at-most-once)."
    )


@pytest.mark.parametrize("on_store_error", ["ignore", "RUN", False])
def test_e006_on_store_error_that_is_not_a_choice(on_store_error: Any) -> None:
    error = only(errors(ONCEONLY_ON_STORE_ERROR=on_store_error), "django_onceonly.E006")

    assert error.msg == (
        f"ONCEONLY_ON_STORE_ERROR={on_store_error!r} must be 'raise' (fail closed) or 'run'."
    )


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, "1MB", True, None])
def test_e007_max_result_bytes_that_is_not_a_positive_int(max_bytes: Any) -> None:
    error = only(errors(ONCEONLY_MAX_RESULT_BYTES=max_bytes), "django_onceonly.E007")

    assert error.msg == (
        f"ONCEONLY_MAX_RESULT_BYTES={max_bytes!r} must be a positive whole number of bytes."
    )


def test_e008_database_that_is_not_an_alias() -> None:
    error = only(errors(ONCEONLY_DATABASE="replica"), "django_onceonly.E008")

    assert error.msg == "ONCEONLY_DATABASE='replica' is not an alias in DATABASES."
    assert error.hint is not None
    assert "default" in error.hint


def test_e009_redis_cache_that_is_not_an_alias() -> None:
    found = errors(
        ONCEONLY_STORE="django_onceonly.stores.RedisStore",
        ONCEONLY_REDIS_CACHE="sessions",
        CACHES=REDIS,
    )

    error = only(found, "django_onceonly.E009")
    assert error.msg == "ONCEONLY_REDIS_CACHE='sessions' is not an alias in CACHES."


def test_e010_redis_cache_that_is_not_django_redis() -> None:
    found = errors(
        ONCEONLY_STORE="django_onceonly.stores.RedisStore",
        ONCEONLY_REDIS_CACHE="default",
        CACHES=REDIS,
    )

    error = only(found, "django_onceonly.E010")
    assert error.msg == (
        "CACHES['default'] does not use django-redis; RedisStore needs a django_redis backend."
    )


def test_redis_store_with_a_django_redis_cache_gives_no_errors() -> None:
    found = errors(
        ONCEONLY_STORE="django_onceonly.stores.RedisStore",
        ONCEONLY_REDIS_CACHE="onceonly",
        CACHES=REDIS,
    )

    assert found == []


def test_e009_applies_to_a_subclass_of_redis_store_whatever_its_name() -> None:
    found = errors(
        ONCEONLY_STORE=f"{__name__}.CustomStoreForRedis",
        ONCEONLY_REDIS_CACHE="nowhere",
        CACHES=REDIS,
    )

    assert only(found, "django_onceonly.E009").msg == (
        "ONCEONLY_REDIS_CACHE='nowhere' is not an alias in CACHES."
    )


def test_a_store_named_like_redis_store_but_not_one_is_not_checked_as_one() -> None:
    assert errors(ONCEONLY_STORE=f"{__name__}.NotARedisStore", CACHES=LOCMEM) == []


def test_w001_redis_cache_with_a_version_warns_that_bumping_it_forgets_every_intent() -> None:
    cache = {**REDIS["onceonly"], "VERSION": 3}
    with override_settings(
        ONCEONLY_STORE="django_onceonly.stores.RedisStore",
        ONCEONLY_REDIS_CACHE="onceonly",
        CACHES={**REDIS, "onceonly": cache},
    ):
        found = check_settings(None)

    assert [message.id for message in found] == ["django_onceonly.W001"]
    assert isinstance(found[0], Warning)
    assert found[0].msg == (
        "CACHES['onceonly'] has VERSION=3: RedisStore's keys include the cache's VERSION, "
        "so changing it (a common way to flush a cache) forgets every stored intent and lets "
        "all past work run again."
    )


def test_each_concern_is_its_own_registered_check() -> None:
    registered = set(registry.get_checks())

    assert set(checks.CHECKS) <= registered
    assert check_settings not in registered
    assert len(checks.CHECKS) == 6


def test_cache_settings_are_not_checked_for_the_database_store() -> None:
    assert errors(ONCEONLY_REDIS_CACHE="nowhere") == []


def test_several_bad_settings_are_all_reported() -> None:
    found = errors(ONCEONLY_TTL=0, ONCEONLY_LEASE=0, ONCEONLY_DATABASE="nope")

    assert [error.id for error in found] == [
        "django_onceonly.E003",
        "django_onceonly.E004",
        "django_onceonly.E008",
    ]
