from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings

from django_onceonly.stores import BaseStore, Record, duplicates, get_store
from django_onceonly.stores.database import close_connections
from tests.services import IN_CI, how_to_start, is_up

# Real Celery workers for tests/test_celery_*.py; a Redis Cluster for test_redis_cluster.py.
pytest_plugins = ["tests.celery.fixtures", "tests.redis_cluster"]

# Every store configuration the contract suite runs on:
# name -> (ONCEONLY_STORE, database alias, server it needs or None).
BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("django_onceonly.stores.DatabaseStore", "default", None),
    "postgres": ("django_onceonly.stores.DatabaseStore", "postgres", "postgres"),
    "mariadb": ("django_onceonly.stores.DatabaseStore", "mariadb", "mariadb"),
    "redis": ("django_onceonly.stores.RedisStore", "default", "redis"),
}


@dataclass
class Backend:
    """The store under test, configured through the real settings."""

    name: str
    store_path: str
    alias: str

    @property
    def store(self) -> BaseStore:
        return get_store()

    def record(self, key: str, scope: str = "") -> Record | None:
        """The record as the store keeps it (expired or not), or None, once this process's
        buffered duplicate counts are written."""
        duplicates.flush()
        return self.store.get(scope, key)


def pytest_configure(config: pytest.Config) -> None:
    if IN_CI:
        down = [name for name in ("postgres", "mariadb", "redis", "rabbitmq") if not is_up(name)]
        if down:
            raise pytest.UsageError(
                "CI=true but these servers are not answering (no test may skip in CI): "
                + "; ".join(how_to_start(name) for name in down)
            )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_CI:
        return  # pytest_configure has already refused to start with a server down
    for item in items:
        for marker in item.iter_markers("services"):
            for name in marker.args:
                if not is_up(name):
                    item.add_marker(pytest.mark.skip(reason=how_to_start(name)))


def backend_params(*names: str) -> list[Any]:
    """``pytest.param`` for each backend, marked with the database and server it needs."""
    params = []
    for name in names or tuple(BACKENDS):
        _, alias, service = BACKENDS[name]
        marks: list[Any] = [pytest.mark.django_db(transaction=True, databases=["default", alias])]
        if service:
            marks.append(pytest.mark.services(service))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test that takes `backend` runs once per store configuration, unless it chose.
    if "backend" in metafunc.fixturenames and not any(
        "backend" in marker.args[0] for marker in metafunc.definition.iter_markers("parametrize")
    ):
        metafunc.parametrize("backend", backend_params(), indirect=True)


@pytest.fixture(autouse=True)
def _no_duplicate_counts_left_over() -> Iterator[None]:
    """Each test starts with an empty duplicate-count buffer.

    A test that reads counts flushes them itself (``Backend.record`` does); what is left
    at its end, such as counts for a redis-server the test stopped, is dropped.
    """
    yield
    duplicates.discard()


@pytest.fixture
def backend(request: pytest.FixtureRequest, settings: Any) -> Iterator[Backend]:
    """The store under test: ``ONCEONLY_STORE`` and ``ONCEONLY_DATABASE`` point at it."""
    store_path, alias, service = BACKENDS[request.param]
    settings.ONCEONLY_STORE = store_path
    settings.ONCEONLY_DATABASE = alias
    if service == "redis":
        settings.ONCEONLY_REDIS_CACHE = settings.REDIS_TEST_CACHE
        delete_redis_test_keys()
    yield Backend(name=request.param, store_path=store_path, alias=alias)
    duplicates.flush()  # while the test's records and settings are still there
    close_connections()
    if service == "redis":
        delete_redis_test_keys()


def delete_redis_test_keys() -> None:
    """Delete this run's keys from the test Redis database: never another run's, never FLUSH."""
    from django_redis import get_redis_connection

    conn = get_redis_connection(settings.REDIS_TEST_CACHE)
    pattern = settings.REDIS_TEST_PREFIX + "*"  # letters, digits and dashes: no glob escapes
    batch: list[bytes] = []
    for name in conn.scan_iter(match=pattern, count=1000):
        batch.append(name)
        if len(batch) >= 1000:
            conn.unlink(*batch)
            batch.clear()
    if batch:
        conn.unlink(*batch)


@pytest.fixture(autouse=True)
def _close_private_connections() -> Iterator[None]:
    yield
    close_connections()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"onceonly databases: {', '.join(sorted(settings.DATABASES))}; CI={IN_CI}"]
