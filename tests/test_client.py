"""``django_onceonly.client`` against the real API served by gunicorn on 127.0.0.1.

Each test that takes ``live`` runs once per store (SQLite, PostgreSQL, MariaDB, Redis),
with the server process reading and writing the same test databases as this process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from django_onceonly import (
    FingerprintMismatch,
    InvalidKey,
    InvalidResult,
    LockLost,
    ResultTooLarge,
    StoreUnavailable,
)
from django_onceonly.client import ApiError, AsyncOnceOnlyClient, OnceOnlyClient
from tests.conftest import backend_params
from tests.live_server import Live, free_port, live, live_servers  # noqa: F401


@pytest.fixture
def client(live: Live) -> Iterator[OnceOnlyClient]:  # noqa: F811
    token, _ = live.token()
    with OnceOnlyClient(live.url, token) as http:
        yield http


def test_locked_then_duplicate_then_the_stored_result(
    live: Live,  # noqa: F811
    client: OnceOnlyClient,
) -> None:
    lock = client.check_lock("welcome_email_1", ttl=3600, lease=60, metadata={"user": 1})
    assert lock.locked
    assert not lock.duplicate
    assert lock.status == "locked"
    assert lock.key == "welcome_email_1"
    assert lock.token
    assert isinstance(lock.lease_expires_at, dt.datetime)
    assert lock.lease_expires_at.tzinfo is not None

    running = client.check_lock("welcome_email_1")
    assert running.duplicate
    assert running.token is None
    assert running.record_status == "in_progress"
    assert running.retry_after is not None
    assert 0 < running.retry_after <= 60

    lock.complete({"message_id": "m-1"})
    assert lock.record_status == "completed"
    done = client.check_lock("welcome_email_1")
    assert done.duplicate
    assert done.record_status == "completed"
    assert done.result == {"message_id": "m-1"}
    assert done.completed_at == lock.completed_at
    record = client.get_lock("welcome_email_1")
    assert record is not None
    assert record["metadata"] == {"user": 1}
    assert client.get_lock("no-such-key") is None


def test_context_manager_completes_on_success_and_releases_on_error(
    live: Live,  # noqa: F811
    client: OnceOnlyClient,
) -> None:
    with client.check_lock("a") as lock:
        assert lock.locked
    assert client.check_lock("a").record_status == "completed"

    with pytest.raises(RuntimeError), client.check_lock("b") as lock:
        raise RuntimeError("provider down")
    assert client.check_lock("b").locked  # released: the retry claims it

    with pytest.raises(RuntimeError), client.check_lock("c", on_error="fail") as lock:
        raise RuntimeError("card declined")
    blocked = client.check_lock("c")
    assert blocked.record_status == "failed"
    assert blocked.error == "RuntimeError: card declined"

    with client.check_lock("c") as duplicate:  # leaving a duplicate's block does nothing
        assert duplicate.duplicate


def test_fail_and_release(live: Live, client: OnceOnlyClient) -> None:  # noqa: F811
    lock = client.check_lock("sms-1")
    lock.fail("timeout after send", outcome_unknown=True)
    assert lock.record_status == "unknown"
    assert client.check_lock("sms-1").record_status == "unknown"
    lock = client.check_lock("sms-2")
    lock.release()
    assert lock.record_status is None
    assert client.check_lock("sms-2").locked


def test_stale_owner_gets_lock_lost(live: Live, client: OnceOnlyClient) -> None:  # noqa: F811
    old = client.check_lock("charge-7")
    # Someone with the same token releases it (an operator, a retry), a new owner claims.
    httpx.post(
        f"{live.url}/v1/release",
        json={"key": "charge-7", "token": old.token},
        headers=client._endpoints.headers,
    ).raise_for_status()
    new = client.check_lock("charge-7")
    assert new.locked
    with pytest.raises(LockLost):
        old.complete("stale")
    with pytest.raises(LockLost):
        old.release()
    new.complete("fresh")
    assert client.check_lock("charge-7").result == "fresh"
    with pytest.raises(LockLost, match="duplicate"):
        client.check_lock("charge-7").complete("x")  # a duplicate is never the owner


def test_fingerprint_mismatch(live: Live, client: OnceOnlyClient) -> None:  # noqa: F811
    client.check_lock("charge-7", fingerprint="sha256:aaa")
    with pytest.raises(FingerprintMismatch):
        client.check_lock("charge-7", fingerprint="sha256:bbb")


def test_result_too_large_keeps_the_claim(live: Live, client: OnceOnlyClient) -> None:  # noqa: F811
    lock = client.check_lock("report-1")
    with pytest.raises(ResultTooLarge) as raised:
        lock.complete("x" * 5000)  # the live server's limit is 4096 bytes
    assert raised.value.size == 5002
    assert raised.value.limit == 4096
    assert client.check_lock("report-1").record_status == "in_progress"
    lock.complete("small")
    assert client.check_lock("report-1").result == "small"


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
def test_bad_input_becomes_value_errors(live: Live, client: OnceOnlyClient) -> None:  # noqa: F811
    with pytest.raises(InvalidKey, match="control character"):
        client.check_lock("a\nb")
    with pytest.raises(InvalidKey):
        client.check_lock("k" * 256)
    with pytest.raises(ValueError, match="ttl"):
        client.check_lock("k", ttl=-1)
    lock = client.check_lock("k")
    with pytest.raises(InvalidResult):
        lock.complete(object())  # refused before sending
    with pytest.raises(InvalidResult, match="NUL"):
        lock.complete("a\x00b")  # refused by the server
    lock.complete("ok")


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
def test_wrong_token_is_an_api_error(live: Live) -> None:  # noqa: F811
    with OnceOnlyClient(live.url, "wrong") as client, pytest.raises(ApiError) as raised:
        client.check_lock("k")
    assert raised.value.status_code == 401


def test_nobody_listening_is_store_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/onceonly"
    with OnceOnlyClient(url, "t") as client, pytest.raises(StoreUnavailable, match="reached"):
        client.check_lock("k")


def test_timeout_is_store_unavailable() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts the connection, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/onceonly"
        with (
            OnceOnlyClient(url, "t", timeout=0.5) as client,
            pytest.raises(StoreUnavailable, match="Timeout"),
        ):
            client.check_lock("k")


class _Answers503(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b'{"detail": "The store is unavailable", "code": "store_unavailable"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_5xx_is_store_unavailable() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answers503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/onceonly"
        with OnceOnlyClient(url, "t") as client, pytest.raises(StoreUnavailable, match="503"):
            client.check_lock("k")
    finally:
        server.shutdown()
        server.server_close()


def test_async_client(live: Live) -> None:  # noqa: F811
    token, _ = live.token()

    async def scenario() -> None:
        async with AsyncOnceOnlyClient(live.url + "/v1", token) as client:
            lock = await client.check_lock("welcome_email_1")
            assert lock.locked
            duplicate = await client.check_lock("welcome_email_1")
            assert duplicate.duplicate
            await lock.acomplete({"id": 1})
            assert (await client.check_lock("welcome_email_1")).result == {"id": 1}

            async with await client.check_lock("b") as lock:
                assert lock.locked
            assert (await client.check_lock("b")).record_status == "completed"
            with pytest.raises(RuntimeError):
                async with await client.check_lock("c"):
                    raise RuntimeError("boom")
            assert (await client.check_lock("c")).locked
            await client.check_lock("fp", fingerprint="1")
            with pytest.raises(FingerprintMismatch):
                await client.check_lock("fp", fingerprint="2")
            assert await client.get_lock("no-such-key") is None

    asyncio.run(scenario())
