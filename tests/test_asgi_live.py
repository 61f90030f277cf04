"""``@idempotent`` on an ``async def`` Django view, served by a real ASGI server (uvicorn).

The same live-server harness as ``tests/test_drf_live.py`` (the test databases shared
with the server, a gate the view awaits), with uvicorn instead of runserver: the async
view and django-onceonly's async path run on uvicorn's event loop.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User

from tests.conftest import Backend
from tests.test_drf_live import PASSWORD, LiveServer, race

PATH = "/plain/async-slow-checkout/"
TRIALS = 10


class UvicornServer(LiveServer):
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]


@pytest.fixture(scope="session")
def asgi_servers(
    django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], LiveServer]]:
    servers: dict[str, LiveServer] = {}

    def get(backend: str) -> LiveServer:
        if backend not in servers:
            servers[backend] = UvicornServer(backend, tmp_path_factory.mktemp(f"asgi-{backend}"))
            servers[backend].start()
        return servers[backend]

    yield get
    for server in servers.values():
        server.stop()


@pytest.fixture
def asgi_server(backend: Backend, asgi_servers: Callable[[str], LiveServer]) -> LiveServer:
    User.objects.create_user("alice", password=PASSWORD)
    return asgi_servers(backend.name)


def test_an_async_view_under_uvicorn_runs_once_per_key(asgi_server: LiveServer) -> None:
    for _ in range(TRIALS):
        key = str(uuid.uuid4())

        replies = sorted(race(asgi_server, key, PATH), key=lambda reply: reply.status)

        assert [reply.status for reply in replies] == [201, 409]
        assert replies[1].headers["content-type"] == "application/problem+json"
        assert asgi_server.runs(key) == 1
        replay = asgi_server.post(PATH, key)
        assert replay.status == 201
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.body == replies[0].body
        assert asgi_server.runs(key) == 1
    print(f"\n{asgi_server.backend}: {TRIALS} races under uvicorn, each ran the view once")
