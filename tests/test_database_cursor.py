"""DatabaseStore keeps one cursor open on a PostgreSQL connection between calls.

What Django's ``connection.cursor()`` guarantees must still hold: a connection Django
closed (``CONN_MAX_AGE``, an unusable connection) or the server dropped is replaced,
never used through an old cursor; ``execute_wrapper()`` and the debug cursor see every
statement; a statement that fails leaves no cursor behind to be reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError, connections
from django.test.utils import CaptureQueriesContext

from django_onceonly import StoreUnavailable, check_lock
from django_onceonly.stores.database import _KEPT_CURSOR
from tests.conftest import Backend, backend_params

pytestmark = pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)


def kept_cursor(backend: Backend) -> Any:
    return connections[backend.alias].__dict__.get(_KEPT_CURSOR)


def drop_connection_under_a_kept_cursor(backend: Backend) -> int:
    """Leave a kept cursor on the connection, then have the server end its session."""
    check_lock("k").complete("r")
    assert check_lock("k").duplicate
    pid: int = connections[backend.alias].connection.info.backend_pid
    other = connections.create_connection(backend.alias)
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    return pid


def test_duplicate_checks_share_one_cursor(backend: Backend) -> None:
    check_lock("k").complete("r")
    assert check_lock("k").duplicate
    cursor = kept_cursor(backend)

    assert check_lock("k").duplicate

    assert cursor is not None
    assert kept_cursor(backend) is cursor
    assert not cursor.cursor.closed


def test_a_connection_django_closed_is_replaced_with_its_cursor(backend: Backend) -> None:
    check_lock("k").complete("r")
    assert check_lock("k").duplicate
    old = kept_cursor(backend)
    conn = connections[backend.alias]

    conn.close()  # what CONN_MAX_AGE and close_if_unusable_or_obsolete() do
    lock = check_lock("k")

    assert lock.duplicate
    assert lock.result == "r"
    assert kept_cursor(backend) is not old
    assert kept_cursor(backend).cursor.connection is conn.connection


def test_a_connection_the_server_dropped_is_replaced(backend: Backend) -> None:
    drop_connection_under_a_kept_cursor(backend)

    with pytest.raises(StoreUnavailable, match="is unavailable"):
        check_lock("k")

    assert kept_cursor(backend) is None
    lock = check_lock("k")  # reconnects
    assert lock.duplicate
    assert lock.result == "r"


def test_with_conn_health_checks_a_dropped_connection_is_replaced_before_the_claim(
    backend: Backend,
) -> None:
    # CONN_HEALTH_CHECKS: Django checks a persistent connection at its first use in each
    # request, and reconnects rather than fail. The kept cursor must not skip that.
    pid = drop_connection_under_a_kept_cursor(backend)
    conn = connections[backend.alias]
    conn.health_check_enabled = True
    conn.health_check_done = False  # a new request, as request_started leaves it

    try:
        lock = check_lock("k")
    finally:
        conn.health_check_enabled = False

    assert lock.duplicate
    assert lock.result == "r"
    assert conn.connection.info.backend_pid != pid


def test_execute_wrappers_see_the_statements_of_the_kept_cursor(backend: Backend) -> None:
    check_lock("k").complete("r")
    assert check_lock("k").duplicate
    seen: list[str] = []

    def wrapper(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        seen.append(sql.split()[0])
        return execute(sql, *args)

    with connections[backend.alias].execute_wrapper(wrapper):
        assert check_lock("k").duplicate
        assert check_lock("k").duplicate

    assert seen == ["SELECT", "SELECT"]


def test_logged_queries_go_through_djangos_debug_cursor(backend: Backend) -> None:
    check_lock("k").complete("r")
    assert check_lock("k").duplicate

    with CaptureQueriesContext(connections[backend.alias]) as queries:
        assert check_lock("k").duplicate

    assert [query["sql"].split()[0] for query in queries.captured_queries] == ["SELECT"]


def test_a_statement_that_fails_discards_the_cursor(backend: Backend) -> None:
    check_lock("k").complete("r")
    assert check_lock("k").duplicate
    old = kept_cursor(backend)

    def failing(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        raise OperationalError("the network went away")

    with (
        connections[backend.alias].execute_wrapper(failing),
        pytest.raises(StoreUnavailable, match="the network went away"),
    ):
        check_lock("k")

    assert old.cursor.closed
    assert kept_cursor(backend) is None
    assert check_lock("k").duplicate
    assert kept_cursor(backend) is not old
