"""Bad input and a dead database: each gives its exact error, and nothing is half-written.

"Nothing written" is shown through the store (``backend.record``), which holds for every
store; for the database stores the whole table is also checked to be empty.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import ProgrammingError, connections, transaction

from django_onceonly import (
    InvalidKey,
    InvalidResult,
    ResultTooLarge,
    StoreUnavailable,
    check_lock,
    once,
)
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import DatabaseStore
from django_onceonly.stores.database import close_connections
from tests.conftest import Backend, backend_params


def assert_nothing_stored(backend: Backend, *keys: str, scope: str = "") -> None:
    """No record under any of ``keys``; on a database store, no row at all."""
    for key in keys:
        assert backend.record(key, scope=scope) is None, key
    if isinstance(backend.store, DatabaseStore):
        assert list(IdempotencyRecord.objects.using(backend.alias).values_list("key")) == []


AT_MOST = "at most 3153600000 (100 years)"


def exact(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern for exactly ``message``."""
    return f"^{re.escape(message)}$"


# -- keys and scopes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "message", "lookalikes"),
    [
        ("", "key must not be empty", []),
        ("x" * 256, "key is 256 characters long; the limit is 255", ["x" * 255]),
        ("ab\x00c", "key contains the control character '\\x00' at index 2", ["abc"]),
        ("ab\nc", "key contains the control character '\\n' at index 2", ["ab\nc", "abc"]),
        ("\tabc", "key contains the control character '\\t' at index 0", ["\tabc", "abc"]),
        ("ab\x7f", "key contains the control character '\\x7f' at index 2", ["ab\x7f", "ab"]),
        ("ab\x85", "key contains the control character '\\x85' at index 2", ["ab\x85", "ab"]),
        ("a\ud800b", "key contains a lone surrogate '\\ud800' at index 1", ["ab", "a?b"]),
        ("\udfff", "key contains a lone surrogate '\\udfff' at index 0", ["?"]),
    ],
    ids=["empty", "256-chars", "NUL", "newline", "tab", "DEL", "NEL", "surrogate", "low-surrogate"],
)
def test_invalid_key_is_refused_and_nothing_is_written(
    backend: Backend, key: str, message: str, lookalikes: list[str]
) -> None:
    with pytest.raises(InvalidKey, match=exact(message)):
        check_lock(key)

    # Never truncated, stripped or stored as given.
    assert_nothing_stored(backend, *lookalikes)


def test_invalid_key_is_a_value_error(backend: Backend) -> None:
    with pytest.raises(ValueError, match="key must not be empty"):
        check_lock("")


def test_key_of_255_characters_is_fine(backend: Backend) -> None:
    lock = check_lock("x" * 255)

    assert lock.locked
    record = backend.record("x" * 255)
    assert record is not None
    assert record.key == "x" * 255


@pytest.mark.parametrize(
    ("key", "type_name"),
    [(42, "int"), (b"welcome", "bytes"), (None, "NoneType"), (uuid.UUID(int=1), "UUID")],
    ids=["int", "bytes", "None", "uuid"],
)
def test_non_str_key_is_refused(backend: Backend, key: Any, type_name: str) -> None:
    with pytest.raises(InvalidKey, match=exact(f"key must be a str, not {type_name}")):
        check_lock(key)

    assert_nothing_stored(backend, str(key))


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (None, "scope must be a str, not NoneType"),
        (7, "scope must be a str, not int"),
        ("s" * 256, "scope is 256 characters long; the limit is 255"),
        ("tenant\n", "scope contains the control character '\\n' at index 6"),
        ("\x00", "scope contains the control character '\\x00' at index 0"),
        ("t\x85", "scope contains the control character '\\x85' at index 1"),
        ("t\ud800", "scope contains a lone surrogate '\\ud800' at index 1"),
    ],
    ids=["None", "int", "256-chars", "newline", "NUL", "NEL", "surrogate"],
)
def test_invalid_scope_is_refused(backend: Backend, scope: Any, message: str) -> None:
    with pytest.raises(InvalidKey, match=exact(message)):
        check_lock("k", scope=scope)

    assert_nothing_stored(backend, "k")
    assert backend.record("k", scope="s" * 255) is None


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"ttl": 0},
            ValueError,
            f"ttl must be a positive number of seconds or a timedelta, {AT_MOST}, not 0",
        ),
        ({"ttl": -1.5}, ValueError, "ttl must be a positive number of seconds"),
        ({"ttl": dt.timedelta(0)}, ValueError, "ttl must be a positive number of seconds"),
        (
            {"ttl": 1e12},
            ValueError,
            f"ttl must be a positive number of seconds or a timedelta, {AT_MOST}, not 1000000000000.0",
        ),
        ({"ttl": float("inf")}, ValueError, f"{AT_MOST}, not inf"),
        ({"ttl": float("nan")}, ValueError, f"{AT_MOST}, not nan"),
        (
            {"ttl": dt.timedelta.max},
            ValueError,
            f"{AT_MOST}, not datetime.timedelta(days=999999999",
        ),
        ({"ttl": 3_153_600_001}, ValueError, f"{AT_MOST}, not 3153600001"),
        ({"ttl": True}, ValueError, f"{AT_MOST}, not True"),
        ({"ttl": 1e-81}, ValueError, "ttl must be at least one microsecond (stores keep"),
        (
            {"lease": dt.timedelta(microseconds=0.4)},
            ValueError,
            "lease must be a positive number of seconds",
        ),
        ({"lease": 5e-7}, ValueError, "lease must be at least one microsecond"),
        ({"lease": 0}, ValueError, "lease must be a positive number of seconds"),
        ({"lease": "60"}, ValueError, "lease must be a positive number of seconds"),
        (
            {"lease": float("inf")},
            ValueError,
            f"lease must be a positive number of seconds or a timedelta, {AT_MOST}, not inf",
        ),
        ({"lease": 1e12}, ValueError, f"{AT_MOST}, not 1000000000000.0"),
        ({"lease": float("-inf")}, ValueError, f"{AT_MOST}, not -inf"),
        ({"on_error": "retry"}, ValueError, "on_error must be one of ('release', 'fail')"),
        ({"fingerprint": 5}, ValueError, "fingerprint must be a str or None, not int"),
        ({"fingerprint": "f" * 256}, ValueError, "fingerprint is 256 characters long"),
        ({"metadata": {"at": object()}}, ValueError, "metadata must be a JSON-serialisable dict"),
    ],
    ids=[
        "ttl-0",
        "ttl-negative",
        "ttl-timedelta-0",
        "ttl-1e12",
        "ttl-inf",
        "ttl-nan",
        "ttl-timedelta-max",
        "ttl-over-100-years",
        "ttl-bool",
        "ttl-under-a-microsecond",
        "lease-timedelta-rounds-to-0",
        "lease-under-a-microsecond",
        "lease-0",
        "lease-str",
        "lease-inf",
        "lease-1e12",
        "lease-minus-inf",
        "on_error",
        "fingerprint-int",
        "fingerprint-long",
        "metadata",
    ],
)
def test_invalid_option_is_refused_and_nothing_is_written(
    backend: Backend, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        check_lock("k", **options)

    assert_nothing_stored(backend, "k")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fingerprint": "sha256:\x00"}, "fingerprint contains the control character '\\x00'"),
        ({"metadata": {"note": "a\x00b"}}, "metadata cannot be stored: it contains a NUL"),
        ({"fingerprint": "sha\ud800"}, "fingerprint contains a lone surrogate '\\ud800'"),
        ({"metadata": {"note": "a\ud800b"}}, "metadata cannot be stored: it contains a lone"),
        ({"metadata": {"\udc80": 1}}, "metadata cannot be stored: it contains a lone"),
    ],
    ids=[
        "fingerprint-NUL",
        "metadata-NUL",
        "fingerprint-surrogate",
        "metadata-surrogate",
        "metadata-key-surrogate",
    ],
)
def test_nul_in_fingerprint_or_metadata_is_bad_input_not_a_dead_store(
    backend: Backend, settings: Any, options: dict[str, Any], message: str
) -> None:
    # PostgreSQL cannot store NUL. If it reached the database the error would look like
    # an outage, and ONCEONLY_ON_STORE_ERROR="run" would then run the work unprotected.
    settings.ONCEONLY_ON_STORE_ERROR = "run"

    with pytest.raises(ValueError, match=re.escape(message)):
        check_lock("k", **options)

    assert_nothing_stored(backend, "k")


def test_nul_in_a_failure_text_is_stored_escaped(backend: Backend) -> None:
    lock = check_lock("k")

    lock.fail(ValueError("bad byte \x00 in payload"))

    record = backend.record("k")
    assert record is not None
    assert record.status == "failed"
    assert record.error == "ValueError: bad byte \\x00 in payload"


def test_lone_surrogate_in_a_failure_text_is_stored_escaped(backend: Backend) -> None:
    lock = check_lock("k")

    lock.fail(ValueError("bad text \ud800 from a client"))

    record = backend.record("k")
    assert record is not None
    assert record.status == "failed"
    assert record.error == "ValueError: bad text \\ud800 from a client"


@pytest.mark.parametrize(
    "ttl", [1e12, float("inf"), dt.timedelta.max], ids=["1e12", "inf", "timedelta-max"]
)
def test_once_with_an_absurd_ttl_is_refused_when_decorating_and_never_runs(
    backend: Backend, ttl: Any
) -> None:
    runs: list[int] = []

    with pytest.raises(ValueError, match=re.escape(AT_MOST)):

        @once(key="charge_{order}", ttl=ttl)
        def charge(order: int) -> int:
            runs.append(order)
            return order

    assert runs == []
    assert_nothing_stored(backend, "charge_1")


@pytest.mark.parametrize(
    "ttl", [1e12, float("inf"), dt.timedelta.max], ids=["1e12", "inf", "timedelta-max"]
)
def test_absurd_ttl_is_refused_before_the_claim_so_nothing_is_left_in_progress(
    backend: Backend, ttl: Any
) -> None:
    # Before: check_lock accepted it, complete() overflowed and the record stayed in
    # progress (or the context manager released it and the work ran again).
    with pytest.raises(ValueError, match=re.escape(AT_MOST)):
        check_lock("charge_1", ttl=ttl)

    assert_nothing_stored(backend, "charge_1")


def test_longest_ttl_and_lease_are_stored_and_replayed(backend: Backend) -> None:
    lock = check_lock("long", ttl=3_153_600_000, lease=3_153_600_000)
    lock.complete({"ok": True})

    again = check_lock("long")
    assert again.duplicate
    assert again.result == {"ok": True}
    assert again.expires_at is not None
    assert again.expires_at.year >= dt.datetime.now(dt.UTC).year + 99


def test_once_with_a_template_giving_a_bad_key_does_not_run(backend: Backend) -> None:
    runs: list[str] = []

    @once(key="welcome_{email}")
    def send(email: str) -> str:
        runs.append(email)
        return email

    with pytest.raises(InvalidKey, match="key contains the control character '\\\\n'"):
        send("a@example.com\n")

    @once(key="welcome_{user}")
    def send_misnamed(email: str) -> str:
        runs.append(email)
        return email

    with pytest.raises(InvalidKey, match="names 'user' which is not an argument of"):
        send_misnamed("a@example.com")

    assert runs == []
    assert_nothing_stored(backend, "welcome_a@example.com", "welcome_a@example.com\n")


# -- results -----------------------------------------------------------------------------


def _circular() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (
            object(),
            "result of type object cannot be stored: it is not JSON-serialisable "
            "(Object of type object is not JSON serializable)",
        ),
        (
            {1, 2},
            "result of type set cannot be stored: it is not JSON-serialisable "
            "(Object of type set is not JSON serializable)",
        ),
        (float("nan"), "result of type float cannot be stored: it is not JSON-serialisable"),
        (float("inf"), "result of type float cannot be stored: it is not JSON-serialisable"),
        (
            {"sent_at": dt.datetime(2024, 1, 1)},
            "result of type dict cannot be stored: it is not JSON-serialisable "
            "(Object of type datetime is not JSON serializable)",
        ),
        ({(1, 2): "x"}, "result of type dict cannot be stored: it is not JSON-serialisable"),
        (_circular(), "result of type list cannot be stored: it is not JSON-serialisable"),
        ("a\x00b", "result cannot be stored: it contains a NUL character (\\u0000)"),
        ({"k\x00": 1}, "result cannot be stored: it contains a NUL character (\\u0000)"),
        (
            "bad\ud800",
            "result cannot be stored: it contains a lone surrogate ('\\ud800'), which is not "
            "valid UTF-8 text",
        ),
        ({"\udfff": 1}, "result cannot be stored: it contains a lone surrogate ('\\udfff')"),
    ],
    ids=[
        "object",
        "set",
        "nan",
        "inf",
        "datetime",
        "tuple-key",
        "circular",
        "NUL",
        "NUL-key",
        "surrogate",
        "surrogate-key",
    ],
)
def test_unserialisable_result_is_refused_and_the_claim_is_still_owned(
    backend: Backend, result: Any, message: str
) -> None:
    lock = check_lock("k")
    before = backend.record("k")

    with pytest.raises(InvalidResult, match=f"^{re.escape(message)}"):
        lock.complete(result)

    assert backend.record("k") == before
    assert before is not None
    assert before.status == "in_progress"
    assert before.owner_token == lock.token
    assert isinstance(InvalidResult("x"), TypeError)
    lock.complete("stored after all")
    assert check_lock("k").result == "stored after all"


def test_result_over_the_limit_is_refused_with_its_size(backend: Backend, settings: Any) -> None:
    settings.ONCEONLY_MAX_RESULT_BYTES = 100
    lock = check_lock("k")
    before = backend.record("k")

    with pytest.raises(
        ResultTooLarge,
        match=exact(
            "result is 101 bytes as JSON, over ONCEONLY_MAX_RESULT_BYTES=100; "
            "store a reference (an id or URL) instead of the payload"
        ),
    ) as caught:
        lock.complete("x" * 99)

    assert (caught.value.size, caught.value.limit) == (101, 100)
    assert backend.record("k") == before
    lock.complete("x" * 98)  # exactly 100 bytes with its quotes
    assert check_lock("k").result == "x" * 98


def test_result_limit_counts_bytes_not_characters(backend: Backend, settings: Any) -> None:
    settings.ONCEONLY_MAX_RESULT_BYTES = 100
    lock = check_lock("k")

    with pytest.raises(ResultTooLarge, match="result is 102 bytes"):
        lock.complete("é" * 50)

    lock.complete("é" * 49)
    assert check_lock("k").result == "é" * 49


def test_context_manager_frees_the_claim_when_the_result_cannot_be_stored(
    backend: Backend,
) -> None:
    with pytest.raises(InvalidResult), check_lock("k") as lock:
        lock.complete({1, 2})

    assert_nothing_stored(backend, "k")
    assert check_lock("k").locked


def test_once_frees_the_claim_when_the_result_cannot_be_stored(
    backend: Backend, settings: Any
) -> None:
    settings.ONCEONLY_MAX_RESULT_BYTES = 50
    runs: list[int] = []

    @once(key="report_{n}")
    def build_report(n: int) -> Any:
        runs.append(n)
        return object() if len(runs) == 1 else "r" * 100

    with pytest.raises(InvalidResult, match="result of type object cannot be stored"):
        build_report(1)
    assert_nothing_stored(backend, "report_1")
    with pytest.raises(ResultTooLarge, match="result is 102 bytes as JSON"):
        build_report(1)
    assert_nothing_stored(backend, "report_1")
    assert runs == [1, 1]


async def _async_unstorable() -> Any:
    return {1, 2}


def test_async_once_frees_the_claim_when_the_result_cannot_be_stored(backend: Backend) -> None:
    from asgiref.sync import async_to_sync

    wrapped = once(key="async-report")(_async_unstorable)

    with pytest.raises(InvalidResult, match="result of type set cannot be stored"):
        async_to_sync(wrapped)()

    assert_nothing_stored(backend, "async-report")


# -- the database unreachable ------------------------------------------------------------


# A database outage concerns the database stores; Redis outages are in test_redis_outage.py.
DATABASE_OUTAGE = pytest.mark.parametrize(
    "backend", backend_params("sqlite", "postgres", "mariadb"), indirect=True
)


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def database_down(alias: str, *, close: bool = True) -> Iterator[None]:
    """Point ``alias`` at a server that is not there, for real, then put it back.

    New connections go to 127.0.0.1 on a port nobody listens on (for SQLite: a file in a
    directory that does not exist). With ``close=False`` a connection already open on
    the alias stays open, like a caller in the middle of its transaction.
    """
    conn = connections[alias]
    # Every connection to the alias, ours included, shares this dict.
    settings_dict = conn.settings_dict
    saved = dict(settings_dict)
    if close:
        conn.close()
    close_connections()
    if conn.vendor == "sqlite":
        missing = os.path.join(tempfile.gettempdir(), f"onceonly-missing-{uuid.uuid4().hex}")
        settings_dict["NAME"] = os.path.join(missing, "db.sqlite3")
    else:
        settings_dict["HOST"] = "127.0.0.1"
        settings_dict["PORT"] = _unused_port()
    try:
        yield
    finally:
        if close:
            conn.close()
        close_connections()
        settings_dict.clear()
        settings_dict.update(saved)


@DATABASE_OUTAGE
def test_database_down_raises_store_unavailable(backend: Backend) -> None:
    with database_down(backend.alias):
        with pytest.raises(
            StoreUnavailable, match=f"^database {re.escape(repr(backend.alias))} is unavailable: "
        ):
            check_lock("welcome_email_1")
        with pytest.raises(StoreUnavailable):
            check_lock("welcome_email_1")

    # Back up: the same process reconnects, and the failed claims left nothing behind.
    assert_nothing_stored(backend, "welcome_email_1")
    lock = check_lock("welcome_email_1")
    assert lock.locked
    assert not lock.unprotected


@DATABASE_OUTAGE
def test_database_down_with_run_policy_runs_unprotected_and_warns(
    backend: Backend, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.ONCEONLY_ON_STORE_ERROR = "run"
    with (
        database_down(backend.alias),
        caplog.at_level(logging.WARNING, logger="django_onceonly"),
    ):
        lock = check_lock("welcome_email_1", scope="tenant-a")
        assert lock.status == "locked"
        assert lock.locked
        assert lock.unprotected is True
        assert lock.token is None
        # Nothing to write: the owner's calls succeed without touching the store.
        lock.complete("sent")

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "store unavailable" in text
    assert "'welcome_email_1'" in text
    assert "'tenant-a'" in text
    assert "UNPROTECTED" in text
    assert_nothing_stored(backend, "welcome_email_1", scope="tenant-a")
    again = check_lock("welcome_email_1", scope="tenant-a")
    assert again.locked
    assert not again.unprotected


@DATABASE_OUTAGE
def test_database_down_mid_run_keeps_the_claim_unchanged(backend: Backend) -> None:
    lock = check_lock("k", lease=60)
    before = backend.record("k")

    with database_down(backend.alias):
        for call in (lambda: lock.complete("r"), lock.release, lambda: lock.fail("x")):
            with pytest.raises(StoreUnavailable, match="is unavailable"):
                call()
        with pytest.raises(StoreUnavailable):
            lock.extend(120)

    assert backend.record("k") == before
    lock.complete("r")
    assert check_lock("k").result == "r"


@DATABASE_OUTAGE
def test_database_down_inside_the_callers_transaction(backend: Backend) -> None:
    # The caller's connection is open in an atomic block; the claim needs a connection
    # of its own (to commit independently), and that one cannot be opened.
    with transaction.atomic(using=backend.alias):
        with (
            database_down(backend.alias, close=False),
            pytest.raises(StoreUnavailable, match="is unavailable"),
        ):
            check_lock("k")
        lock = check_lock("k")
        assert lock.locked

    record = backend.record("k")
    assert record is not None
    assert record.owner_token == lock.token


@DATABASE_OUTAGE
def test_once_with_the_database_down_does_not_run_the_work(
    backend: Backend, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[int] = []

    @once(key="welcome_{user_id}")
    def send_welcome(user_id: int) -> str:
        sent.append(user_id)
        return "sent"

    with database_down(backend.alias):
        with pytest.raises(StoreUnavailable):
            send_welcome(1)
        assert sent == []
        settings.ONCEONLY_ON_STORE_ERROR = "run"
        with caplog.at_level(logging.WARNING, logger="django_onceonly"):
            assert send_welcome(1) == "sent"
        assert sent == [1]

    assert any("'welcome_1'" in r.getMessage() for r in caplog.records)
    assert_nothing_stored(backend, "welcome_1")
    assert send_welcome(1) == "sent"
    assert sent == [1, 1]
    assert send_welcome(1) == "sent"
    assert sent == [1, 1]


@pytest.mark.parametrize("backend", backend_params("postgres", "mariadb"), indirect=True)
def test_missing_table_is_a_bug_not_an_outage_and_never_runs_unprotected(
    backend: Backend, settings: Any
) -> None:
    # A missing migration is a programming error: it propagates as itself, so
    # ONCEONLY_ON_STORE_ERROR="run" (meant for outages) never runs work past it.
    settings.ONCEONLY_ON_STORE_ERROR = "run"
    conn = connections[backend.alias]
    table = IdempotencyRecord._meta.db_table
    with conn.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {conn.ops.quote_name(table)} RENAME TO onceonly_moved_away")
    try:
        with pytest.raises(ProgrammingError):
            check_lock("welcome_email_1")
    finally:
        with conn.cursor() as cursor:
            cursor.execute(
                f"ALTER TABLE onceonly_moved_away RENAME TO {conn.ops.quote_name(table)}"
            )
    assert_nothing_stored(backend, "welcome_email_1")
