"""A real API server process (gunicorn, 2 workers) on 127.0.0.1, one per store.

The server runs ``tests/live_settings.py``: the test settings on the test databases
pytest-django created for this session, so the test process and the server see the
same users, tokens and records. Servers start on first use and stop before the test
databases are dropped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import connections

from tests.api_fixtures import make_token
from tests.conftest import BACKENDS, Backend

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """A gunicorn process serving the test project; ``url`` is the API's mount point."""

    backend: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/onceonly"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)


def start_server(backend: str, logs: Path, *, workers: int = 2) -> LiveServer:
    store, alias, _ = BACKENDS[backend]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.live_settings",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "ONCEONLY_LIVE_STORE": store,
        "ONCEONLY_LIVE_DATABASE": alias,
        "ONCEONLY_LIVE_REDIS_PREFIX": settings.REDIS_TEST_PREFIX,
        "ONCEONLY_LIVE_DEFAULT_NAME": str(connections["default"].settings_dict["NAME"]),
    }
    for name in ("postgres", "mariadb"):
        if name in connections:
            env[f"ONCEONLY_LIVE_{name.upper()}_NAME"] = str(connections[name].settings_dict["NAME"])
    port = free_port()
    log = logs / f"gunicorn-{backend}.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "django.core.wsgi:get_wsgi_application()",
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LiveServer(backend=backend, port=port, process=process, log=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            # Unauthenticated: 401 means the whole stack (Django, DRF, the API) is up.
            if httpx.get(f"{server.url}/v1/locks/ping", timeout=2).status_code == 401:
                return server
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"gunicorn did not start:\n{server.log_text()[-4000:]}")
        time.sleep(0.2)


class LiveServers:
    """The session's servers, one per store, started on first use."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, LiveServer] = {}

    def get(self, backend: str) -> LiveServer:
        if backend not in self.running:
            self.running[backend] = start_server(backend, self.logs)
        return self.running[backend]

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()


@pytest.fixture(scope="session")
def live_servers(
    django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServers]:
    servers = LiveServers(tmp_path_factory.mktemp("live-api"))
    try:
        yield servers
    finally:
        servers.stop()


@dataclass
class Live:
    """The server of the test's store, and a way to make API clients (users + tokens)."""

    server: LiveServer
    backend: Backend

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, name: str | None = None) -> tuple[str, str]:
        """A new user's token and scope; committed, so the server sees it."""
        return make_token(name)


@pytest.fixture
def live(backend: Backend, live_servers: LiveServers) -> Live:
    """The live server for ``backend`` (the test runs once per store unless it chose)."""
    return Live(server=live_servers.get(backend.name), backend=backend)
