"""The hosted OnceOnly service's own Python SDK (``onceonly-sdk``), unchanged, against us.

A team that self-hosts changes one URL: ``OnceOnly(api_key, base_url=<mount>/v1)``,
with a DRF token as the API key (``BearerTokenAuthentication``). The SDK posts
``{key, ttl, metadata}`` to ``<base_url>/check-lock`` and reads ``status``, ``key``,
``ttl`` and ``first_seen_at``; each test runs on every store against gunicorn.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from onceonly import OnceOnly, UnauthorizedError, idempotent

from tests.conftest import backend_params
from tests.live_server import Live, live, live_servers  # noqa: F401


def sdk(live: Live, token: str | None = None) -> OnceOnly:  # noqa: F811
    # fail_open=False: an error must fail the test, never pass as "locked".
    return OnceOnly(api_key=token or live.token()[0], base_url=f"{live.url}/v1", fail_open=False)


def test_sdk_check_lock_locked_then_duplicate(live: Live) -> None:  # noqa: F811
    client = sdk(live)
    first = client.check_lock("stripe:evt_123", ttl=3600, meta={"type": "payment"})
    assert first.locked
    assert not first.duplicate
    assert first.should_proceed()
    assert first.status_code == 200
    assert first.key == "stripe:evt_123"
    assert first.ttl == 3600
    assert first.first_seen_at is not None
    first_seen = dt.datetime.fromisoformat(first.first_seen_at)
    assert first_seen.tzinfo is not None

    again = client.check_lock("stripe:evt_123", ttl=3600)
    assert again.duplicate
    assert not again.locked
    assert again.is_duplicate()
    assert again.first_seen_at == first.first_seen_at
    assert 3590 < again.ttl <= 3600
    assert "token" not in again.raw

    record = live.backend.record("stripe:evt_123", scope=live_scope(live, client))
    assert record is not None
    assert record.metadata == {"type": "payment"}


def live_scope(live: Live, client: OnceOnly) -> str:  # noqa: F811
    from rest_framework.authtoken.models import Token

    return f"user:{Token.objects.get(key=client.api_key).user_id}"


def test_sdk_async_check_lock(live: Live) -> None:  # noqa: F811
    client = sdk(live)

    async def twice() -> tuple[Any, Any]:
        first = await client.check_lock_async("order:12345", ttl=60)
        second = await client.check_lock_async("order:12345", ttl=60)
        return first, second

    first, second = asyncio.run(twice())
    assert first.locked
    assert second.duplicate
    assert second.first_seen_at == first.first_seen_at


def test_sdk_idempotent_decorator_runs_the_function_once(live: Live) -> None:  # noqa: F811
    client = sdk(live)
    charged: list[str] = []

    @idempotent(client, key_prefix="payment", ttl=3600, return_value_on_duplicate="skipped")
    def process_payment(order_id: str) -> str:
        charged.append(order_id)
        return "charged"

    assert process_payment("o-1") == "charged"
    assert process_payment("o-1") == "skipped"
    assert process_payment("o-2") == "charged"
    assert charged == ["o-1", "o-2"]

    sent: list[int] = []

    @idempotent(client, key_prefix="email", ttl=3600)
    async def send_email(user_id: int) -> str:
        sent.append(user_id)
        return "sent"

    async def calls() -> list[Any]:
        return [await send_email(7), await send_email(7)]

    assert asyncio.run(calls()) == ["sent", None]
    assert sent == [7]


@pytest.mark.parametrize("backend", backend_params("sqlite", "redis"), indirect=True)
def test_two_api_keys_are_isolated(live: Live) -> None:  # noqa: F811
    alice, bob = sdk(live), sdk(live)
    assert alice.check_lock("webhook:evt_1", ttl=60).locked
    assert bob.check_lock("webhook:evt_1", ttl=60).locked  # bob's own key
    assert alice.check_lock("webhook:evt_1", ttl=60).duplicate
    assert bob.check_lock("webhook:evt_1", ttl=60).duplicate


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
def test_sdk_without_a_valid_key_is_unauthorized(live: Live) -> None:  # noqa: F811
    with pytest.raises(UnauthorizedError):
        sdk(live, token="not-a-token").check_lock("k", ttl=60)


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
def test_sdk_without_ttl_uses_the_servers_defaults(live: Live) -> None:  # noqa: F811
    client = sdk(live)
    first = client.check_lock("k")
    assert first.locked
    assert first.ttl == 300  # ONCEONLY_LEASE: how long the unfinished claim blocks
    assert client.check_lock("k").duplicate
